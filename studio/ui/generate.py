"""The Generate tab: text-to-image with a live preview, a Stop button and live cross-attention maps.

Layout and handlers only. The handler turns the form into a typed `GenerateSpec`, runs
`engine.generate(spec, cancel)` and renders each event it yields:

    Progress       -> progress bar text
    Preview        -> live preview image (and the image under the heat map)
    AttentionMaps  -> attention state -> token picker + heat-map overlay (rendered by a .change event)
    Result         -> gallery (PNGs carrying their settings), settings JSON, PNG downloads

Endpoints: ``/generate`` (streams; the last message holds the result) and ``/read_settings``
(settings from a PNG made here, or one with A1111 ``parameters``).
"""

from __future__ import annotations

import html
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np
from PIL import Image

from studio import specs
from studio.attention.maps import heat_map_overlay
from studio.errors import CancelledError, InvalidInputError, StudioError
from studio.events import AttentionMaps, CancelToken, Preview, Progress, Result
from studio.specs import GenerateSpec
from studio.ui import png_settings

log = logging.getLogger(__name__)

DEFAULTS = GenerateSpec(prompt="")
# Words a heat map is rarely wanted for; the picker starts on the first other word.
_FUNCTION_WORDS = frozenset({"a", "an", "the", "and", "on", "in", "of", "with", "at", "to"})


# --------------------------------------------------------------------------------------------
# Rendering helpers (pure)


def _progress_html(step: int, total: int, text: str, state: str = "running") -> str:
    percent = 100 if total <= 0 else round(100 * step / total)
    return (
        f'<div class="dcs-progress {state}" data-state="{state}">'
        f'<div class="dcs-bar"><div class="dcs-fill" style="width:{percent}%"></div></div>'
        f'<div class="dcs-text">{html.escape(text)}</div></div>'
    )


def _default_token(tokens: list[str]) -> int:
    for index, word in enumerate(tokens):
        if word.lower() not in _FUNCTION_WORDS:
            return index
    return 0


ALL_LAYERS = 0  # resolution picker value for "all resolutions, upsampled and averaged"


def render_attention(attention: dict | None, token: int | None, resolution: int | None = ALL_LAYERS) -> tuple[Any, Any, Any]:
    """Word picker, resolution picker and heat-map image for the attention state and the picks."""
    if not attention:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), None
    tokens: list[str] = attention["tokens"]
    if token is None or not (0 <= int(token) < len(tokens)):
        token = _default_token(tokens)
    token = int(token)
    per_resolution: dict[int, np.ndarray] = attention.get("per_resolution") or {}
    if resolution not in per_resolution:
        resolution = ALL_LAYERS
    maps = attention["maps"] if resolution == ALL_LAYERS else per_resolution[resolution]
    overlay = heat_map_overlay(Image.fromarray(attention["image"]), maps[token])
    word_choices = [(word, index) for index, word in enumerate(tokens)]
    resolution_choices = [("all", ALL_LAYERS)] + [(f"{size}×{size}", size) for size in sorted(per_resolution, reverse=True)]
    return gr.update(choices=word_choices, value=token), gr.update(choices=resolution_choices, value=resolution), overlay


# --------------------------------------------------------------------------------------------
# Form <-> spec


def spec_from_form(
    prompt: str,
    negative_prompt: str,
    seed: float | None,
    random_seed: bool,
    steps: float,
    guidance_scale: float,
    scheduler: str,
    width: float,
    height: float,
    batch_size: float,
    show_attention: bool,
) -> GenerateSpec:
    """The typed spec for the form's values; the engine validates ranges."""
    if not random_seed and seed is None:
        raise InvalidInputError("Enter a seed, or tick 'random seed'.")
    return GenerateSpec(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        seed=None if random_seed else int(seed),
        steps=int(steps),
        guidance_scale=float(guidance_scale),
        scheduler=scheduler,
        width=int(width),
        height=int(height),
        batch_size=int(batch_size),
        capture_attention=bool(show_attention),
    )


def _round_up(value: float, multiple: int) -> int:
    return int(-(-value // multiple) * multiple)


# --------------------------------------------------------------------------------------------
# The tab


@dataclass
class GenerateTab:
    """Handles on the tab's components (tests and app.py refer to them)."""

    prompt: gr.Textbox
    gallery: gr.Gallery
    settings: gr.JSON
    run: Any  # the /generate event (Dependency)


@dataclass
class _Job:
    cancel: CancelToken
    step: int = 0
    total: int = 0


class _Jobs:
    """The running job per browser session, so Stop reaches the engine directly and can say where it stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}

    def start(self, session: str, total: int) -> _Job:
        job = _Job(CancelToken(), 0, total)
        with self._lock:
            self._jobs[session] = job
        return job

    def finish(self, session: str, job: _Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]

    def cancel(self, session: str) -> _Job | None:
        with self._lock:
            job = self._jobs.get(session)
        if job is not None:
            job.cancel.cancel()
        return job


def build_generate_tab(engine: Any) -> GenerateTab:
    """Lay out the Generate tab inside the current gr.Blocks/gr.Tab and wire its events."""
    jobs = _Jobs()
    native = int(engine.native_size)
    multiple = int(engine.size_multiple)
    size_low = _round_up(specs.SIZE.low, multiple)

    # 1. layout ---------------------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            prompt = gr.Textbox(
                label="Prompt",
                placeholder="a big red circle on the left and a small blue square on the right",
                lines=2,
                elem_id="prompt",
            )
            negative_prompt = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
            with gr.Row():
                seed = gr.Number(
                    label="Seed",
                    value=0,
                    precision=0,
                    minimum=specs.SEED.low,
                    maximum=specs.SEED.high,
                    elem_id="seed",
                    scale=3,
                )
                with gr.Column(scale=2, min_width=120):
                    random_seed = gr.Checkbox(label="Random seed", value=True, elem_id="random-seed")
                    reuse_seed = gr.Button("Reuse last seed", size="sm", elem_id="reuse-seed")
            steps = gr.Slider(specs.STEPS.low, specs.STEPS.high, value=DEFAULTS.steps, step=specs.STEPS.step, label=specs.STEPS.label, elem_id="steps")
            guidance_scale = gr.Slider(
                specs.GUIDANCE.low, specs.GUIDANCE.high, value=DEFAULTS.guidance_scale, step=specs.GUIDANCE.step,
                label=specs.GUIDANCE.label, elem_id="guidance",
            )
            scheduler = gr.Dropdown(list(specs.SCHEDULERS), value=DEFAULTS.scheduler, label="Scheduler", elem_id="scheduler")
            with gr.Row():
                width = gr.Slider(size_low, specs.SIZE.high, value=native, step=multiple, label="Width", elem_id="width")
                height = gr.Slider(size_low, specs.SIZE.high, value=native, step=multiple, label="Height", elem_id="height")
            batch_size = gr.Slider(
                specs.BATCH.low, specs.BATCH.high, value=DEFAULTS.batch_size, step=specs.BATCH.step, label=specs.BATCH.label,
                elem_id="batch-size",
            )
            show_attention = gr.Checkbox(
                label="Show attention maps", value=DEFAULTS.capture_attention, elem_id="show-attention",
                info="Capture cross-attention per prompt word while sampling (a little slower).",
            )
            load_png = gr.File(
                label="Load settings from PNG", file_types=[".png"], type="filepath", elem_id="load-png", height=120
            )
            gr.Markdown(
                f"Model **{html.escape(str(engine.model_name))}** on `{html.escape(str(engine.device))}` · "
                f"native size {native}px · sizes in steps of {multiple}px",
                elem_id="model-info",
            )

        with gr.Column(scale=6, min_width=360):
            status = gr.HTML(_progress_html(0, 0, "Ready.", "idle"), label="Progress", elem_id="status")
            with gr.Row(equal_height=False):
                preview = gr.Image(
                    label="Live preview", format="png", interactive=False, elem_id="preview", height=300,
                    buttons=[],
                )
                with gr.Column():
                    heatmap = gr.Image(
                        label="Attention heat map", format="png", interactive=False, elem_id="heatmap", height=300,
                        buttons=[],
                    )
                    resolution_pick = gr.Radio(
                        choices=[], label="Layers (UNet resolution of the maps)", elem_id="resolution-pick",
                    )
            token_pick = gr.Radio(choices=[], label="Attention for word", elem_id="token-pick")
            with gr.Row(equal_height=False):
                gallery = gr.Gallery(
                    label="Results", format="png", columns=2, height=340, object_fit="contain", elem_id="gallery",
                    buttons=["download", "fullscreen"], scale=3,
                )
                with gr.Column(scale=2, min_width=240):
                    downloads = gr.File(label="PNG with settings", file_count="multiple", elem_id="downloads")
                    settings = gr.JSON(label="Settings of this result", elem_id="settings", height=240)

    # Latest attention maps and the image under them; a .change renders the overlay for the picked
    # word, so picking a word mid-run sticks and browsing works after the run.
    attention = gr.State(None)

    # 2. handlers ---------------------------------------------------------------------------
    def generate(
        prompt: str,
        negative_prompt: str | None = None,  # None lets API callers leave it out
        seed: float | None = 0,
        random_seed: bool = True,
        steps: float = DEFAULTS.steps,
        guidance_scale: float = DEFAULTS.guidance_scale,
        scheduler: str = DEFAULTS.scheduler,
        width: float = native,
        height: float = native,
        batch_size: float = DEFAULTS.batch_size,
        show_attention: bool = DEFAULTS.capture_attention,
        request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Generate images from a prompt; streams progress, previews and attention maps, then the result.

        Returns (gallery, preview, status HTML, attention state, settings, PNG files).
        """
        skip = gr.skip()
        try:
            spec = spec_from_form(
                prompt, negative_prompt, seed, random_seed, steps, guidance_scale, scheduler, width, height,
                batch_size, show_attention,
            )
        except (InvalidInputError, TypeError, ValueError) as error:
            raise gr.Error(str(error)) from error

        session = _session(request)
        job = jobs.start(session, spec.steps)
        cancel = job.cancel
        events: Iterator | None = None
        started = time.monotonic()
        attention_state: dict | None = None
        current_image: np.ndarray | None = None
        step, total = 0, spec.steps
        # The PNG downloads are written here; Gradio copies returned files into its cache (cleaned by
        # delete_cache) before the generator resumes, so the folder goes when the run ends.
        run_folder = Path(tempfile.mkdtemp(prefix="dcs-run-"))
        try:
            # Earlier results stay until this run has new ones to show.
            yield skip, skip, _progress_html(0, total, "Starting…"), skip, skip, skip
            events = engine.generate(spec, cancel)
            for event in events:
                if isinstance(event, Progress):
                    step, total = event.step, event.total
                    job.step, job.total = step, total  # for Stop's message
                    elapsed = time.monotonic() - started
                    text = event.message or f"Step {step} / {total} · {elapsed:.1f} s"
                    yield skip, skip, _progress_html(step, total, text), skip, skip, skip
                elif isinstance(event, Preview):
                    current_image = np.asarray(event.images[0].convert("RGB"))
                    if attention_state is not None:
                        attention_state = {**attention_state, "image": current_image}
                    yield skip, event.images[0], skip, attention_state or skip, skip, skip
                elif isinstance(event, AttentionMaps):
                    maps = np.asarray(event.maps, dtype=np.float32)
                    under = current_image if current_image is not None else _blank(spec, engine)
                    attention_state = {
                        "step": event.step,
                        "tokens": list(event.tokens),
                        "maps": maps,
                        "per_resolution": dict(event.per_resolution),
                        "image": under,
                    }
                    yield skip, skip, skip, attention_state, skip, skip
                elif isinstance(event, Result):
                    yield _finish(event, attention_state, started, run_folder)
        except CancelledError as error:
            yield skip, skip, _progress_html(step, total, f"Stopped: {error}", "stopped"), skip, skip, skip
        except StudioError as error:
            yield skip, skip, _progress_html(step, total, str(error), "failed"), skip, skip, skip
            raise gr.Error(str(error)) from error
        except Exception as error:  # a bug, not bad input: keep the app alive, keep details in the log
            log.exception("generate failed for %r", spec)
            message = f"Generation failed unexpectedly ({type(error).__name__}); see the server log."
            yield skip, skip, _progress_html(step, total, message, "failed"), skip, skip, skip
            raise gr.Error(message) from error
        finally:
            # Stop pressed (GeneratorExit at a yield), an error, or done: tell the engine and let it
            # unwind (its lock, its attention processors) before the next job.
            cancel.cancel()
            if events is not None and hasattr(events, "close"):
                events.close()
            jobs.finish(session, job)
            shutil.rmtree(run_folder, ignore_errors=True)

    def _finish(result: Result, attention_state: dict | None, started: float, folder: Path) -> tuple:
        settings = dict(result.settings)
        tagged = [png_settings.with_settings(image, settings, index) for index, image in enumerate(result.images)]
        files = _save_downloads(result.images, settings, folder)
        first = np.asarray(result.images[0].convert("RGB"))
        if attention_state is not None:
            attention_state = {**attention_state, "image": first}
        seconds = result.timings.get("total", time.monotonic() - started)
        text = (
            f"Done in {seconds:.1f} s · seed {settings.get('seed')} · "
            f"{result.unet_evaluations} UNet evaluations"
        )
        caption = f"seed {settings.get('seed')}"
        gallery_value = [(image, f"{caption} · #{index}" if len(tagged) > 1 else caption) for index, image in enumerate(tagged)]
        total = int(settings.get("steps") or 0)
        return (
            gallery_value,
            result.images[0],
            _progress_html(total, total, text, "done"),
            attention_state,
            settings,
            files,
        )

    def _save_downloads(images: list[Image.Image], settings: dict, folder: Path) -> list[str]:
        seed_value = settings.get("seed")
        paths = []
        for index, image in enumerate(images):
            name = f"{seed_value}-{index}.png" if len(images) > 1 else f"{seed_value}.png"  # short: the UI truncates
            paths.append(str(png_settings.save_png(image, settings, folder / name, batch_index=index)))
        return paths

    def stop_job(request: gr.Request) -> Any:
        job = jobs.cancel(_session(request))
        if job is None:
            return gr.skip()
        return _progress_html(job.step, job.total, f"Stopped after step {job.step} of {job.total}.", "stopped")

    def read_settings(file: str | None) -> tuple:
        """Settings from a PNG made by this app (or one with A1111 'parameters'), for every form field.

        Returns (prompt, negative prompt, seed, random seed, steps, guidance scale, scheduler, width,
        height, batch size). Whether attention maps are shown is a view option, not a setting.
        """
        if not file:
            raise gr.Error("Upload a PNG to read its settings.")
        try:
            found = png_settings.read_png_settings(file)
        except InvalidInputError as error:
            raise gr.Error(str(error)) from error
        skip = gr.skip()
        values = png_settings.spec_fields(found)
        checks = {
            "steps": specs.STEPS, "guidance_scale": specs.GUIDANCE, "batch_size": specs.BATCH,
            "seed": specs.SEED, "width": specs.SIZE, "height": specs.SIZE,
        }
        for name, bounds in checks.items():
            value = values.get(name)
            if value is None:
                continue
            try:
                bounds.check(name, value)
            except InvalidInputError as error:
                gr.Warning(f"Not restored: {error}")
                values.pop(name)
        if values.get("scheduler") not in (None, *specs.SCHEDULERS):
            gr.Warning(f"Not restored: scheduler {values.pop('scheduler')!r} is not available here.")
        seed_value = values.get("seed")
        return (
            values.get("prompt", skip),
            values.get("negative_prompt", skip),
            seed_value if seed_value is not None else skip,
            False if seed_value is not None else skip,  # a restored seed means "this exact image"
            values.get("steps", skip),
            values.get("guidance_scale", skip),
            values.get("scheduler", skip),
            values.get("width") or skip,
            values.get("height") or skip,
            values.get("batch_size", skip),
        )

    def reuse_last_seed(shown: dict | None) -> tuple:
        if not shown or shown.get("seed") is None:
            raise gr.Error("Generate an image first; its seed is then reused.")
        return int(shown["seed"]), False

    # 3. events -----------------------------------------------------------------------------
    # The fields a PNG's settings restore; the form adds the view option "show attention maps".
    restorable = [prompt, negative_prompt, seed, random_seed, steps, guidance_scale, scheduler, width, height, batch_size]
    form = [*restorable, show_attention]
    run = gr.on(
        triggers=[go.click, prompt.submit],
        fn=generate,
        inputs=form,
        outputs=[gallery, preview, status, attention, settings, downloads],
        api_name="generate",
        concurrency_id="model",
        show_progress="hidden",
    )
    # Stop: cancel the event (GeneratorExit at the handler's next yield) and set the engine's token so
    # it stops between steps even while no event is being yielded. Runs beside the job, not behind it.
    stop.click(
        stop_job, None, status, cancels=[run], api_name="stop", api_visibility="undocumented",
        concurrency_limit=None, concurrency_id="stop", show_progress="hidden",
    )
    attention_view = dict(
        concurrency_limit=None, concurrency_id="attention-view", show_progress="hidden", api_visibility="private"
    )
    pickers = [attention, token_pick, resolution_pick]
    attention.change(render_attention, pickers, [token_pick, resolution_pick, heatmap], **attention_view)
    gr.on(
        [token_pick.input, resolution_pick.input], lambda *picks: render_attention(*picks)[2], pickers, heatmap,
        **attention_view,
    )
    load_png.upload(read_settings, load_png, restorable, api_name="read_settings", concurrency_id="settings")
    reuse_seed.click(reuse_last_seed, settings, [seed, random_seed], api_visibility="private", concurrency_id="settings")
    return GenerateTab(prompt=prompt, gallery=gallery, settings=settings, run=run)


def _session(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "api"


def _blank(spec: GenerateSpec, engine: Any) -> np.ndarray:
    height = spec.height or int(engine.native_size)
    width = spec.width or int(engine.native_size)
    return np.full((height, width, 3), 96, dtype=np.uint8)


CSS = """
.dcs-progress { padding: 2px 0 6px; }
.dcs-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dcs-fill { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.dcs-progress.done .dcs-fill { background: var(--color-green-500, #22c55e); }
.dcs-progress.stopped .dcs-fill, .dcs-progress.failed .dcs-fill { background: var(--color-red-500, #ef4444); }
.dcs-progress.failed .dcs-text { color: var(--color-red-500, #ef4444); }
.dcs-text { font-size: var(--text-sm); color: var(--body-text-color-subdued); margin-top: 4px; }
/* small models make small images: scale them up without blurring */
#preview img, #heatmap img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#gallery img { image-rendering: pixelated; }
"""
