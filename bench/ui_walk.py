"""A timed walk through every tab of the app, as a user clicks it (issue #16): launch the app on the embedded model,
drive headless Debian chromium at 1400 px and time each action from the click to its result on screen.

    python bench/ui_walk.py --label after                       # this checkout -> bench/results/ui_walk-after.{json,md}
    python bench/ui_walk.py --label before --tree /tmp/before16  # another checkout's app, this walk
    python bench/ui_walk.py --label after --peer /tmp/before16   # both, walks alternating -> also ui_walk-before-vs-after.md

"Result" means the tab's status box (`.dcs-progress`) has reached a new done/stopped/failed state (or an error toast
came) and the result view shows a loaded image (or the table its text). The walk finds everything by elem_id and
data-state, so it measures the app before and after its tabs are reworked; a step that fails is recorded with what the
page said, and the walk goes on. Seconds include the browser's rendering, on whatever else the machine is running
(the report keeps the load average); with --peer the two checkouts' walks alternate, one process each, so drift in
that load hits both alike, and the comparison gives each action's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}

GENERATE_PROMPT = "a big red circle on the left and a small blue square on the right"
SCENE_CAPTION = "a big red circle on a blue background"  # the rendered scene the Inversion and DiffEdit tabs get
DIFFEDIT_TARGET = "a big green circle on a blue background"
P2P_INVERSION_TARGET = "a big yellow circle on a blue background"  # word swap red -> yellow of the inverted scene
INVERSION_METHODS = ("ddim", "null_text")

# The walk marks what was on screen before a click (data-walk-stale), so only what the click brings counts.
MARK_STALE = """([status, result]) => {
  const marked = [...document.querySelectorAll('.toast-body.error')];
  if (status) marked.push(...document.querySelectorAll(status + ' .dcs-progress'));
  marked.forEach(node => node.setAttribute('data-walk-stale', '1'));
  return result ? [...document.querySelectorAll(result)].map(img => img.src || '') : [];
}"""
# false while the action runs; then {state, text}. state: done | stopped | failed (the status box) | error (a toast).
OUTCOME = """([status, result, resultText, oldSources]) => {
  const toast = document.querySelector('.toast-body.error:not([data-walk-stale])');
  if (toast) return {state: 'error', text: toast.innerText};
  let state = 'done', text = '';
  if (status) {
    const box = document.querySelector(status + ' .dcs-progress:not([data-walk-stale])');
    if (!box || !['done', 'stopped', 'failed'].includes(box.dataset.state)) return false;
    state = box.dataset.state;
    text = box.innerText;
  }
  if (state !== 'done') return {state, text};
  const nodes = [...document.querySelectorAll(result)];
  const shown = resultText
    ? nodes.some(node => node.innerText.includes(resultText))
    // without a status box the image itself is the only sign of a new result: it must be a new one
    : nodes.some(img => img.complete && img.naturalWidth > 0 && (status || !oldSources.includes(img.src)));
  return shown ? {state, text} : false;
}"""


@dataclass(frozen=True)
class WalkInputs:
    """What the walk uploads: a rendered shapes scene the embedded model can caption."""

    scene: Path


@dataclass(frozen=True)
class Action:
    """One timed user action: `prepare` fills the form (not timed), then `start` (a button's selector, what the user
    does, or None: opening the tab is the action) until `status` shows a new finished state and `result` shows an
    image (or contains `result_text`)."""

    tab: str  # the tab's label, as the user clicks it
    tab_id: str  # the gr.Tab id (app.py), which names its screenshot
    name: str
    start: str | Callable[[Any], None] | None
    result: str
    status: str | None = None
    result_text: str = ""
    prepare: Callable[[Any], None] | None = None
    from_inversion: bool = False  # edits the Inversion tab's image


@dataclass
class Timing:
    tab: str
    action: str
    seconds: float | None  # None: no result came
    state: str  # done | stopped | failed | error | timeout | absent (the app has no such tab)
    said: str = ""  # the status box's (or the error's) last words
    walk: int = 0  # which walk of the repeats

    @property
    def ok(self) -> bool:
        return self.state == "done"

    @property
    def failed(self) -> bool:
        return self.state not in ("done", "absent")


@dataclass
class Walk:
    label: str
    tree: str
    commit: str
    started: str
    model: str = ""
    device: str = ""
    torch_threads: int = 0
    launch_seconds: float = 0.0
    load_average: dict[str, list[float]] = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The actions


def fill(page: Any, selector: str, value: str) -> None:
    page.locator(f"{selector} textarea, {selector} input").first.fill(value)


def set_number(page: Any, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def first_example(examples: str, filled: str) -> Callable[[Any], None]:
    """Click a tab's first example and wait until it has filled `filled`."""
    def prepare(page: Any) -> None:
        page.locator(f"{examples} button, {examples} td").first.click()
        page.wait_for_function(
            "selector => (document.querySelector(selector + ' textarea, ' + selector + ' input')?.value || '') !== ''",
            arg=filled)
    return prepare


def actions(inputs: WalkInputs, attention_maps: bool = True) -> list[Action]:
    """Every tab's main actions in the order a user meets them; the edits of the inversion come after it."""
    from studio.inversion import METHOD_LABELS

    def generate(page: Any) -> None:
        fill(page, "#prompt", GENERATE_PROMPT)
        page.locator("#show-attention input").set_checked(attention_maps)

    def upload_to_inversion(page: Any) -> None:
        page.locator("#inversion-upload input[type=file]").set_input_files(str(inputs.scene))

    def invert(page: Any) -> None:
        fill(page, "#inversion-prompt", SCENE_CAPTION)
        methods = page.locator("#inversion-methods")
        for method, label in METHOD_LABELS.items():
            methods.get_by_label(label, exact=True).set_checked(method in INVERSION_METHODS)

    def diffedit_upload(page: Any) -> None:
        page.locator("#diffedit-image input[type=file]").set_input_files(str(inputs.scene))
        page.wait_for_selector("#diffedit-image img")
        fill(page, "#diffedit-source", SCENE_CAPTION)
        fill(page, "#diffedit-target", DIFFEDIT_TARGET)

    def p2p_of_inversion(page: Any) -> None:
        fill(page, "#p2p-source", SCENE_CAPTION)  # before the tick: the inversion may grey it out
        fill(page, "#p2p-target", P2P_INVERSION_TARGET)
        page.locator("#p2p-edit").get_by_label("word swap").check()
        fill(page, "#p2p-blend-words", "circle")  # the example's "circle, square" does not fit this target
        page.locator("#p2p-use-inversion input").check()

    def diffedit_of_inversion(page: Any) -> None:
        fill(page, "#diffedit-source", SCENE_CAPTION)  # before the tick: the inversion may grey it out
        fill(page, "#diffedit-target", DIFFEDIT_TARGET)
        page.locator("#diffedit-use-inversion input").check()

    def personalize(page: Any) -> None:
        page.click("#personalize-render")  # the shapes world's stars, with their captions
        page.wait_for_function("() => document.querySelectorAll('#personalize-images img').length >= 6")

    find_mask = {"start": "#diffedit-mask-btn", "status": "#diffedit-status", "result": "#diffedit-mask-preview img"}
    edit = {"start": "#diffedit-edit-btn", "status": "#diffedit-status", "result": "#diffedit-result img"}
    p2p_edit = {"start": "#p2p-go", "status": "#p2p-status", "result": "#p2p-images img"}
    inversion_label = METHOD_LABELS["null_text"]
    return [
        Action("Generate", "generate", "prompt -> gallery image", "#generate-btn", "#gallery img", "#status",
               prepare=generate),
        Action("Structure", "structure", "example picture -> result under its maps", "#structure-btn",
               "#structure-gallery img", "#structure-status",
               prepare=first_example("#structure-examples", "#structure-prompt")),
        Action("Inversion", "inversion", "upload -> preview", upload_to_inversion, "#inversion-prepared img"),
        Action("Inversion", "inversion", "invert ddim+null_text -> table", "#inversion-btn", "#inversion-table",
               "#inversion-status", result_text=inversion_label, prepare=invert),
        Action("SDEdit", "sdedit", "example strokes -> strip", "#sdedit-btn", "#sdedit-strip img", "#sdedit-status",
               prepare=first_example("#sdedit-examples", "#sdedit-prompt")),
        Action("DiffEdit", "diffedit", "find mask -> mask preview", **find_mask, prepare=diffedit_upload),
        Action("DiffEdit", "diffedit", "edit -> edited image", **edit),
        Action("Prompt-to-Prompt", "p2p", "example -> edited image", **p2p_edit,
               prepare=first_example("#p2p-examples", "#p2p-source")),
        Action("Prompt-to-Prompt", "p2p", "edit of the inversion -> edited image", **p2p_edit,
               prepare=p2p_of_inversion, from_inversion=True),
        Action("DiffEdit", "diffedit", "find mask on the inversion -> mask preview", **find_mask,
               prepare=diffedit_of_inversion, from_inversion=True),
        Action("DiffEdit", "diffedit", "edit of the inversion -> edited image", **edit, from_inversion=True),
        Action("Personalize", "personalize", "rendered stars -> Textual Inversion -> samples", "#personalize-btn",
               "#personalize-samples img", "#personalize-status", prepare=personalize),
        Action("History", "history", "open -> the session's results", None, "#history-gallery img"),
    ]


def walk_inputs(folder: Path) -> WalkInputs:
    """Render the scene the walk uploads (a big red circle on blue, as the embedded model draws it) into `folder`."""
    from PIL import Image

    from studio.shapes.render import Scene, make_object, render

    scene = folder / "scene.png"
    Image.fromarray(render(Scene("blue", (make_object("circle", "red", "big", "left"),))).image).save(scene)
    return WalkInputs(scene)


# --------------------------------------------------------------------------------------------
# Driving the browser


def open_tab(page: Any, tab: str) -> None:
    page.get_by_role("tab", name=tab, exact=True).click()


def perform(page: Any, action: Action, timeout_ms: int, walk: int = 0) -> Timing:
    """Prepare, then time `action` from its click to its result; a failure is a Timing that says what happened."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if page.get_by_role("tab", name=action.tab, exact=True).count() == 0:  # e.g. a tab added later, walking older code
        return Timing(action.tab, action.name, None, "absent", "the app has no such tab", walk)
    try:
        if action.start is not None:
            open_tab(page, action.tab)
        if action.prepare is not None:
            action.prepare(page)
        old_sources = page.evaluate(MARK_STALE, [action.status, action.result])
        started = time.perf_counter()
        if action.start is None:
            open_tab(page, action.tab)
        elif isinstance(action.start, str):
            page.click(action.start)
        else:
            action.start(page)
        outcome = page.wait_for_function(OUTCOME, arg=[action.status, action.result, action.result_text, old_sources],
                                         polling="raf", timeout=timeout_ms).json_value()
        seconds = time.perf_counter() - started
    except PlaywrightTimeout as error:
        return Timing(action.tab, action.name, None, "timeout", str(error).splitlines()[0], walk)
    except PlaywrightError as error:  # the page changed under the walk (an element gone, renamed)
        return Timing(action.tab, action.name, None, "error", str(error).splitlines()[0], walk)
    return Timing(action.tab, action.name, round(seconds, 2), outcome["state"], " ".join(outcome["text"].split()), walk)


def walk_pages(url: str, steps: list[Action], timeout_ms: int, repeats: int = 1,
               after: Callable[[Any, Action, Timing], None] | None = None) -> list[Timing]:
    """Run `steps` `repeats` times in headless chromium on `url`, each walk in a new page (a new session, as a user
    who opens the app); `after(page, action, timing)` sees each result."""
    from playwright.sync_api import sync_playwright

    timings = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for walk in range(repeats):
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.wait_for_selector("#prompt textarea")
            for action in steps:
                timing = perform(page, action, timeout_ms, walk)
                print(f"{walk} {timing.tab:<17} {timing.action:<45} {seconds_text(timing.seconds):>7} s  {timing.state}",
                      flush=True)
                timings.append(timing)
                if after is not None:
                    after(page, action, timing)
            page.close()
        browser.close()
    return timings


# --------------------------------------------------------------------------------------------
# The report


def load_text(load: dict[str, list[float]]) -> str:
    return "; ".join(f"{', '.join(f'{x:.1f}' for x in values)} at the {when}" for when, values in load.items())


def seconds_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def summary(timings: list[Timing]) -> list[dict[str, Any]]:
    """One row per action, in walk order: the median seconds of its done runs (None: none was done), every run's
    seconds and state, and what the status said last."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for t in timings:
        row = rows.setdefault((t.tab, t.action), {"tab": t.tab, "action": t.action, "seconds": [], "states": []})
        row["seconds"].append(t.seconds)
        row["states"].append(t.state)
        row["said"] = t.said
    for row in rows.values():
        done = [s for s, state in zip(row["seconds"], row["states"]) if state == "done"]
        row["median_seconds"] = round(statistics.median(done), 2) if done else None
    return list(rows.values())


def table_lines(walk: Walk) -> list[str]:
    rows = summary(walk.timings)
    lines = [f"# UI walk: {walk.label}", "",
             (f"{walk.tree} at {walk.commit}, {walk.model} on {walk.device} ({walk.torch_threads} torch threads), "
              f"chromium {VIEWPORT['width']} px, {walk.started}; load average (1, 5, 15 min) "
              f"{load_text(walk.load_average)}. Seconds from the click to the result on screen; median of the walks "
              "(each in a new page)."), "",
             "| tab | action | median s | each walk (s) | state | the status said last |", "|---|---|---:|---|---|---|"]
    for row in rows:
        runs = ", ".join(seconds_text(s) for s in row["seconds"])
        states = ", ".join(sorted(set(row["states"])))
        lines.append(f"| {row['tab']} | {row['action']} | {seconds_text(row['median_seconds'])} | {runs} | {states} "
                     f"| {row['said'].replace('|', '/')} |")
    done = [row["median_seconds"] for row in rows if row["median_seconds"] is not None]
    lines += ["", f"{len(done)} of {len(rows)} actions done, {sum(done):.1f} s in all (medians)."]
    return lines


def write_report(walk: Walk, out: Path) -> Path:
    """bench/results/ui_walk-<label>.json and .md (the table), as the other benchmarks store theirs."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"ui_walk-{walk.label}"
    report = asdict(walk) | {"viewport": VIEWPORT, "summary": summary(walk.timings)}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    lines = table_lines(walk)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out / f"{name}.json"


def commit_of(tree: Path) -> str:
    """The tree's commit, with "+changes" when its work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def use_tree(tree: Path) -> None:
    """Import the app, its engine and the test harness from `tree` (this checkout by default)."""
    sys.path[:0] = [str(tree), str(tree / "tests")]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names the results: bench/results/ui_walk-<label>.json")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose app is walked (default: this one)")
    parser.add_argument("--peer", type=Path, default=None,
                        help="another checkout to walk by turns with --tree (e.g. a worktree of the code before a change)")
    parser.add_argument("--peer-label", default="before", help="names the peer's results")
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-attention", dest="attention_maps", action="store_false",
                        help="generate without attention maps (default: with, the Generate tab's headline)")
    parser.add_argument("--repeats", type=int, default=3, help="walks, each in a new page (the table keeps the median)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one action may take")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def walk_tree(args: argparse.Namespace) -> Walk:
    """`args.repeats` walks of the app of `args.tree`, in this process."""
    tree = args.tree.resolve()
    use_tree(tree)
    import torch
    from app_harness import launched_app

    from studio.engine import Engine

    walk = Walk(args.label, str(tree), commit_of(tree), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    walk.load_average["start"] = load_average()
    started = time.perf_counter()
    engine = Engine(args.model, device=args.device)
    walk.model, walk.device, walk.torch_threads = engine.model_name, str(engine.device), torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="ui-walk-") as folder:
        steps = actions(walk_inputs(Path(folder)), args.attention_maps)
        with launched_app(engine, Path(folder)) as url:
            walk.launch_seconds = round(time.perf_counter() - started, 2)
            walk.timings = walk_pages(url, steps, int(args.timeout * 1000), args.repeats)
    walk.load_average["end"] = load_average()
    return walk


def alternating(args: argparse.Namespace) -> tuple[Walk, Walk]:
    """Walk the peer checkout and this one by turns, each walk in its own process (the two apps cannot share one),
    `args.repeats` times each: (the peer's walks, this checkout's walks)."""
    passed = ["--timeout", str(args.timeout)] + [option for option, value in (
        (["--model", args.model], args.model), (["--device", args.device], args.device),
        (["--no-attention"], not args.attention_maps)) if value for option in option]
    walks: dict[str, list[Walk]] = {args.peer_label: [], args.label: []}
    with tempfile.TemporaryDirectory(prefix="ui-walks-") as folder:
        for n in range(args.repeats):
            for label, tree in ((args.peer_label, args.peer), (args.label, args.tree)):
                out = Path(folder) / f"{label}-{n}"
                subprocess.run([sys.executable, __file__, "--label", label, "--tree", str(tree), "--repeats", "1",
                                "--out", str(out), *passed], check=False)  # a walk with failed actions still reports
                walks[label].append(read_report(out / f"ui_walk-{label}.json", walk=n))
    peer, this = (joined(walks[label]) for label in (args.peer_label, args.label))
    return peer, this


def read_report(path: Path, walk: int | None = None) -> Walk:
    """A Walk from its JSON report; with `walk`, its timings renumbered as that walk."""
    fields = {name: value for name, value in json.loads(path.read_text()).items() if name in Walk.__dataclass_fields__}
    renumbered = {} if walk is None else {"walk": walk}
    fields["timings"] = [Timing(**(timing | renumbered)) for timing in fields["timings"]]
    return Walk(**fields)


def joined(walks: list[Walk]) -> Walk:
    """One Walk of several single walks of one checkout: every timing, the load at the first start and the last end."""
    first, last = walks[0], walks[-1]
    return replace(first, timings=[t for walk in walks for t in walk.timings],
                   load_average={"start": first.load_average["start"], "end": last.load_average["end"]})


def comparison_lines(peer: Walk, this: Walk) -> list[str]:
    """Each action's median seconds in both checkouts and their ratio (this / peer; below 1: faster)."""
    theirs = {(row["tab"], row["action"]): row["median_seconds"] for row in summary(peer.timings)}
    lines = [f"# UI walk: {peer.label} vs {this.label}", "",
             (f"{peer.label}: {peer.tree} at {peer.commit}; {this.label}: {this.tree} at {this.commit}. Walks "
              f"alternating ({len({t.walk for t in this.timings})} each, one process per walk), {this.model} on "
              f"{this.device}, chromium {VIEWPORT['width']} px, {this.started}. Median seconds from the click to the "
              "result on screen."),
             "", f"| tab | action | {peer.label} s | {this.label} s | {this.label} / {peer.label} |", "|---|---|---:|---:|---:|"]
    for row in summary(this.timings):
        before, after = theirs.pop((row["tab"], row["action"]), None), row["median_seconds"]
        ratio = f"{after / before:.2f}" if before and after is not None else "-"
        lines.append(f"| {row['tab']} | {row['action']} | {seconds_text(before)} | {seconds_text(after)} | {ratio} |")
    lines += [f"| {tab} | {action} | {seconds_text(seconds)} | - | - |" for (tab, action), seconds in theirs.items()]
    return lines


def load_average() -> list[float]:
    return [round(load, 2) for load in os.getloadavg()]


def main(argv: list[str] | None = None) -> list[Walk]:
    """The walk of --tree (or, with --peer, of both checkouts by turns), written to --out; the walks made."""
    args = parse_args(argv)
    if args.peer is None:
        walks = [walk_tree(args)]
    else:
        walks = list(alternating(args))
        lines = comparison_lines(*walks)
        (args.out / f"ui_walk-{args.peer_label}-vs-{args.label}.md").write_text("\n".join(lines) + "\n")
    for walk in walks:
        write_report(walk, args.out)
    if args.peer is not None:
        print("\n".join(lines))
    return walks


if __name__ == "__main__":
    sys.exit(1 if any(t.failed for walk in main() for t in walk.timings) else 0)
