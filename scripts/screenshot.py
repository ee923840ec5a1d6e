"""Retake the README screenshots: launch the app on the default (embedded) model, generate with
attention maps in headless chromium, and save the page; with --all, one page per tab after a realistic job.

    python scripts/screenshot.py                       # -> docs/screenshot-generate.png
    python scripts/screenshot.py --model PATH --prompt "..." --out shot.png
    python scripts/screenshot.py --all                 # -> docs/screenshot-<tab>.png for every tab
    python scripts/screenshot.py --tab personalize     # -> docs/screenshot-personalize.png only (any tab id)

--all drives each tab as bench/ui_walk.py does (the same actions): Inversion after DDIM + null-text inversion of a
rendered scene, SDEdit after its first stroke example, DiffEdit after Find mask + Edit, Prompt-to-Prompt after its
first example, Personalize after a Textual Inversion of rendered stars; and Structure after a run on a rendered
scene (its layout and outline maps derived from it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import ui_walk  # bench/ (on sys.path above): the walk through every tab

TIMEOUT_MS = 300_000
WORD_PICKERS = {"generate": "#token-pick", "structure": "#structure-token-pick"}  # tabs whose shot shows a word's map


def generate_action(args: argparse.Namespace) -> ui_walk.Action:
    """The README's Generate job: a fixed seed, a batch, attention maps."""
    def prepare(page) -> None:
        page.fill("#prompt textarea", args.prompt)
        page.uncheck("#random-seed input")
        for elem_id, value in (("seed", args.seed), ("steps", args.steps), ("batch-size", args.batch_size)):
            ui_walk.set_number(page, elem_id, value)
        page.check("#show-attention input")

    return ui_walk.Action("Generate", "generate", "prompt -> gallery image", "#generate-btn", "#gallery img", "#status",
                          prepare=prepare)


def structure_action(args: argparse.Namespace, folder: Path) -> ui_walk.Action:
    """The README's Structure job: a rendered shapes scene on the canvas, each row's map derived from it, a fixed
    seed, attention maps on."""
    from PIL import Image

    from studio.shapes.render import Scene, make_object, render

    scene = folder / "structure-scene.png"
    Image.fromarray(render(Scene("blue", (make_object("circle", "red", "big", "left"),
                                          make_object("square", "yellow", "small", "right")))).image).save(scene)

    def prepare(page) -> None:
        page.locator("#structure-canvas input[type=file]").set_input_files(str(scene))
        page.wait_for_selector("#structure-row1-map-view img")
        page.fill("#structure-prompt textarea", "a big green circle on the left and a small yellow square on the right")
        page.uncheck("#structure-random-seed input")
        for elem_id, value in (("structure-seed", args.seed), ("structure-steps", args.steps)):
            ui_walk.set_number(page, elem_id, value)

    return ui_walk.Action("Structure", "structure", "canvas -> maps -> gallery image", "#structure-btn",
                          "#structure-gallery img", "#structure-status", prepare=prepare)


def shoot(page, path: Path) -> None:
    page.wait_for_timeout(1500)  # the last images and plots draw
    page.evaluate("window.scrollTo(0, 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompt", default="a big red circle on the left and a small blue square on the right")
    parser.add_argument("--word", default="circle", help="the word whose heat map is shown")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot-generate.png"), help="the Generate shot (without --all)")
    parser.add_argument("--all", action="store_true", help="one shot per tab: OUT_DIR/screenshot-<tab>.png")
    parser.add_argument("--tab", help="one tab's shot only, by its id (structure, personalize, ...), in OUT_DIR")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    args = parser.parse_args()

    from app_harness import launched_app

    from studio.engine import Engine

    def path_of(tab_id: str) -> Path:
        return Path(args.out_dir) / f"screenshot-{tab_id}.png" if args.all or args.tab else Path(args.out)

    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        steps = [generate_action(args), structure_action(args, Path(folder))]
        steps += [action for action in ui_walk.actions(ui_walk.walk_inputs(Path(folder)))
                  if action.tab_id not in ("generate", "structure") and not action.from_inversion]
        if not args.all:
            steps = [action for action in steps if action.tab_id == (args.tab or "generate")]
            if not steps:
                raise SystemExit(f"No tab {args.tab!r}: the tab ids are app.py's (generate, structure, personalize, ...).")
        last_of_tab = {action.tab_id: action for action in steps}

        def after(page, action: ui_walk.Action, timing: ui_walk.Timing) -> None:
            if timing.failed:
                raise SystemExit(f"{action.tab}: {action.name} did not finish ({timing.state}: {timing.said})")
            if not timing.ok:
                return  # a tab this app does not have
            if action.tab_id in WORD_PICKERS:
                page.wait_for_timeout(3000)  # the result's attention state resets the picker: pick after it
                page.locator(f"{WORD_PICKERS[action.tab_id]} label", has_text=args.word).first.click()
            if last_of_tab[action.tab_id] is action:
                shoot(page, path_of(action.tab_id))

        with launched_app(Engine(args.model), Path(folder)) as url:
            ui_walk.walk_pages(url, steps, TIMEOUT_MS, after=after)


if __name__ == "__main__":
    main()
