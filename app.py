"""Diffusion Control Studio: the Gradio app. Layout and wiring only; the engine does the work.

    python app.py                          # embedded model, best device, http://127.0.0.1:7860
    python app.py --model /path/to/sd15    # a diffusers folder, a single .safetensors file or a hub id
    python app.py --device cpu --port 7861 --share
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from studio.images import limit_decoding
from studio.model_options import add_model_options, open_engine
from studio.ui import (diffedit, generate, history, inversion, p2p, parts, personalize, sdedit, send, session_concepts,
                       stream, structure)
from studio.ui.inputs import StudioBlocks

if TYPE_CHECKING:
    from studio.engine import Engine  # torch: imported at run time only by main()

TITLE = "Diffusion Control Studio"
QUEUE_MAX_SIZE = 16  # jobs waiting beyond this are refused with "queue full" instead of piling up
MAX_FILE_SIZE = "20mb"  # uploads (settings PNGs) are small


def build_app(engine: Engine, concepts_dir: Path = personalize.CONCEPTS_DIR) -> gr.Blocks:
    """The Blocks app for a loaded engine, queued (one model job at a time), not launched; training writes each
    run's concept files into a folder of its own under `concepts_dir`."""
    # Cached uploads and outputs are deleted after an hour (checked hourly).
    limit_decoding()  # PIL refuses images over the studio's limit from their header, before Gradio decodes them
    with StudioBlocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\nGenerate, invert and edit images with a diffusion model you can watch and steer. "
                    f"{stream.KEYS_HELP}.", elem_id="header")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generating = generate.GenerateTab(engine)
            with gr.Tab("Structure", id="structure"):
                structuring = structure.StructureTab(engine)
            with gr.Tab("Inversion", id="inversion"):
                inverted = inversion.InversionTab(engine)
            with gr.Tab("SDEdit", id="sdedit"):
                sdediting = sdedit.SDEditTab(engine)
            with gr.Tab("DiffEdit", id="diffedit"):
                diffediting = diffedit.DiffEditTab(engine, inversion_state=inverted.inversion_state)
            with gr.Tab("Prompt-to-Prompt", id="p2p"):
                p2p_editing = p2p.P2PTab(engine, inversion_state=inverted.inversion_state)
            with gr.Tab("Personalize", id="personalize"):
                personalize.PersonalizeTab(engine, concepts_dir=concepts_dir)
            with gr.Tab("History", id="history") as history_page:
                past = history.HistoryTab(engine)
        past.wire_page(history_page)
        send.connect(tabs, [generating, structuring, inverted, sdediting, diffediting, p2p_editing, past])
        demo.unload(history.forget_session)
        demo.unload(session_concepts.session_forgetter(engine))
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE)
    return demo


# Each module's styling, for its own elements (Gradio 6 takes css in launch).
CSS = "\n".join(getattr(module, "CSS", "") for module in (stream, parts, generate, inversion, sdedit, diffedit, p2p,
                                                          history))


def launch_settings() -> dict[str, Any]:
    """launch() keyword arguments every launch uses (app and tests): the security settings of
    ../shared/notes/gradio6.md, and the tab's styling (Gradio 6 takes css/theme in launch)."""
    return dict(
        max_file_size=MAX_FILE_SIZE,
        show_error=False,  # only gr.Error messages reach the browser, never tracebacks
        ssr_mode=False,
        css=CSS,
        js=stream.KEYBOARD_JS,
        theme=gr.themes.Soft(),
        footer_links=["api", "gradio"],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=TITLE)
    add_model_options(parser)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--concepts-dir", type=Path, default=personalize.CONCEPTS_DIR,
                        help="where the Personalize tab writes what it trains (a folder per run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from studio.errors import ModelLoadError

    try:
        engine = open_engine(args)  # loads torch: kept out of module import so tests can build fakes
    except ModelLoadError as error:
        raise SystemExit(f"error: {error}") from error
    logging.getLogger("app").info("model %s on %s", engine.model_name, engine.device)
    demo = build_app(engine, concepts_dir=args.concepts_dir)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_settings())


if __name__ == "__main__":
    main()
