"""Diffusion Control Studio: the Gradio app. Layout and wiring only; the engine does the work.

    python app.py                          # embedded model, best device, http://127.0.0.1:7860
    python app.py --model /path/to/sd15    # a diffusers folder, a single .safetensors file or a hub id
    python app.py --device cpu --port 7861 --share --auth ann:secret
    python app.py --public --host 0.0.0.0  # the strict limits of a public demo (studio.limits.PUBLIC)

It is also a Hugging Face Space's entry point (README's front matter): there the environment speaks instead of flags,
STUDIO_MODEL (as --model), STUDIO_PUBLIC=1 (as --public), STUDIO_AUTH="ann:secret,bob:pw" (as --auth), and Gradio's
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (the defaults of --host / --port).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from starlette.middleware import Middleware

from studio.images import limit_decoding
from studio.limits import LOCAL, PUBLIC, Limits
from studio.model_options import add_model_options, open_engine
from studio.ui import (diffedit, endpoints, generate, gpu, history, inversion, p2p, parts, personalize, sdedit, send,
                       session_concepts, stream, structure)

from studio.ui.inputs import StudioBlocks
from studio.ui.uploads import UploadSpaceGuard

if TYPE_CHECKING:
    from studio.engine import Engine  # the type only (the engine is built by main(), or by a test's fixture)

# Gradio's telemetry (a version check and usage reports, gradio/analytics.py) is off for every Blocks this process
# builds: a public demo does not report its visitors' use. gr.Blocks() reads it, so it is set before any is built.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

TITLE = "Diffusion Control Studio"


def build_app(engine: Engine, concepts_dir: Path = personalize.CONCEPTS_DIR, limits: Limits = LOCAL) -> gr.Blocks:
    """The Blocks app for a loaded engine, queued (one model job at a time), not launched; training writes each
    run's concept files into a folder of its own under `concepts_dir`. `limits` (studio.limits): the job cost cap
    (the lower of the engine's own and the preset's), jobs per session, the queue's size, side handlers' concurrency
    and how long uploads are kept (launch_settings takes the launch-time ones)."""
    if limits.max_job_cost is not None:
        own = engine.max_job_cost  # --max-job-cost
        engine.max_job_cost = limits.max_job_cost if own is None else min(own, limits.max_job_cost)
    limit_decoding()  # PIL refuses images over the studio's limit from their header, before Gradio decodes them
    retention = limits.upload_retention_s  # uploads and outputs older than this go, checked as often
    with StudioBlocks(title=TITLE, delete_cache=(retention, retention)) as demo:
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
        stream.apply_limits(demo, limits.jobs_per_session, limits.side_concurrency, limits.reader_timeout_s)
    # jobs waiting beyond max_size are refused with "queue full" instead of piling up
    # api_open=False: Gradio's /run routes would otherwise call a handler outside the queue (off a Space Gradio opens
    # them), past its concurrency limits and the admission; gradio_client and the browser use the queue
    demo.queue(default_concurrency_limit=1, max_size=limits.queue_size, api_open=False)
    return demo


# Each module's styling, for its own elements (Gradio 6 takes css in launch).
CSS = "\n".join(getattr(module, "CSS", "") for module in (stream, parts, generate, inversion, sdedit, diffedit, p2p,
                                                          history))


def launch_settings(limits: Limits = LOCAL) -> dict[str, Any]:
    """launch() keyword arguments every launch uses (app and tests): the security settings of
    ../shared/notes/gradio6.md with `limits`' file size and upload space, and the tab's styling (Gradio 6 takes
    css/theme in launch)."""
    app_kwargs = endpoints.app_kwargs()  # private events are not callable by name (studio.ui.endpoints)
    if limits.max_cache_mb is not None:
        app_kwargs["middleware"].append(Middleware(UploadSpaceGuard, max_mb=limits.max_cache_mb))
    if limits.jobs_per_session is not None:  # build_app(limits=) counts the places, this refuses a push without one
        app_kwargs["middleware"].append(Middleware(stream.AdmissionGuard))
    return dict(
        max_file_size=f"{limits.max_upload_mb}mb",
        show_error=False,  # only gr.Error messages reach the browser, never tracebacks
        ssr_mode=False,
        css=CSS,
        js=stream.KEYBOARD_JS,
        theme=gr.themes.Soft(),
        footer_links=["api", "gradio"],
        app_kwargs=app_kwargs,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=TITLE)
    add_model_options(parser)
    parser.set_defaults(model=os.environ.get("STUDIO_MODEL") or None)  # a Space picks its model without flags
    # Gradio's own variables, which a Space sets (0.0.0.0 and its port): a default that ignored them would listen on
    # loopback only there.
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to listen on (0.0.0.0 for every interface; default $GRADIO_SERVER_NAME or "
                             "127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                        help="ask every visitor to log in as this user (repeatable; also $STUDIO_AUTH, "
                             "'user:pw,user2:pw2')")
    parser.add_argument("--auth-file", type=Path, metavar="FILE",
                        help="users who may log in, one USER:PASSWORD a line (blank lines and # comments skipped)")
    parser.add_argument("--public", action="store_true", default=_switched_on(os.environ.get("STUDIO_PUBLIC")),
                        help="a public demo's strict limits: one job per visitor, a cap on each job's cost, fewer "
                             "uploads kept for less long (studio.limits.PUBLIC; also $STUDIO_PUBLIC=1)")
    parser.add_argument("--concepts-dir", type=Path, default=personalize.CONCEPTS_DIR,
                        help="where the Personalize tab writes what it trains (a folder per run)")
    args = parser.parse_args(argv)
    try:
        args.credentials = credentials(args.auth, args.auth_file, os.environ.get("STUDIO_AUTH", ""))
    except ValueError as error:
        parser.error(str(error))
    return args


def _switched_on(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def credentials(flags: list[str], auth_file: Path | None, environment: str) -> list[tuple[str, str]]:
    """The (user, password) pairs for Gradio's `auth=`, from --auth, --auth-file and $STUDIO_AUTH together. Each
    entry is USER:PASSWORD, split at its first colon (a password may hold colons; in $STUDIO_AUTH not commas).
    Raises ValueError naming the entry's place, never its password."""
    entries = [(f"--auth #{number}", entry) for number, entry in enumerate(flags, 1)]
    if auth_file is not None:
        try:
            lines = auth_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ValueError(f"--auth-file {auth_file}: cannot read it ({error.strerror}).") from None
        entries += [(f"{auth_file} line {number}", line.strip()) for number, line in enumerate(lines, 1)
                    if line.strip() and not line.strip().startswith("#")]
    entries += [(f"STUDIO_AUTH entry {number}", entry.strip())
                for number, entry in enumerate(environment.split(","), 1) if entry.strip()]
    pairs = []
    for place, entry in entries:
        user, colon, password = entry.partition(":")
        if not colon or not user.strip() or not password:
            raise ValueError(f"{place} is not USER:PASSWORD (a user name, a colon, a password that is not empty).")
        pairs.append((user.strip(), password))
    return pairs


def exposure_warning(host: str, share: bool, authenticated: bool, public: bool = False) -> str | None:
    """What the log should say when the studio is reachable beyond this machine with no login: None when it is not
    (loopback only, or a login asked); it advises public mode's limits where they are not on."""
    if authenticated:
        return None
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        local = False
    reach = [*([f"listens on {host}"] if not local else []), *(["is shared through a gradio.live link"] if share else [])]
    if not reach:
        return None
    return (f"The studio {' and '.join(reach)} without a login: anyone who reaches it can run jobs on this machine. "
            "Add --auth USER:PASSWORD (or --auth-file, $STUDIO_AUTH)"
            + ("." if public else ", and --public for a public demo's limits."))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("app")
    from studio.errors import ModelLoadError

    on_zero_gpu = gpu.prepare()  # imports `spaces` before anything touches CUDA (a ZeroGPU Space's rule)
    if on_zero_gpu and args.device is None:
        args.device = "cuda"  # ZeroGPU's models go to CUDA at start; its worker processes find them there
    try:
        engine = open_engine(args)  # loads torch: kept out of module import so tests can build fakes
    except ModelLoadError as error:
        raise SystemExit(f"error: {error}") from error
    log.info("model %s on %s%s", engine.model_name, engine.device, " (ZeroGPU)" if on_zero_gpu else "")
    limits = PUBLIC if args.public else LOCAL
    demo = build_app(engine, concepts_dir=args.concepts_dir, limits=limits)
    if warning := exposure_warning(args.host, args.share, bool(args.credentials), args.public):
        log.warning(warning)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=args.credentials or None,
                **launch_settings(limits))


if __name__ == "__main__":
    main()
