"""The Personalize tab: teach the model a new word from a few pictures, and choose the concepts this session uses.

Methods (studio.personalize): Textual Inversion (Gal et al. 2022: a new word embedding, eq. 2), LoRA (Hu et al. 2021:
low-rank updates of the UNet's attention projections, eq. 3, or of its ResNet convolutions), DreamBooth (Ruiz et al.
2023: the UNet fine-tuned with the class-prior loss, eq. 2) and Custom Diffusion (Kumari et al. 2023: cross-attention
K/V and a new word; two concepts jointly). The pictures are uploaded, or rendered from the shapes world's reserved
star and heart.

While training the tab streams a progress bar with time left, the loss curve and sample pictures at fixed seeds;
Stop keeps the last checkpoint (the job saves it and loads it). What training writes is loaded into the engine and
added to this browser session's concepts at once, so the new word works in every tab of the session (each tab's
job runs with `spec.concepts`, studio.ui.session_concepts). Users' own files (LoRA in diffusers' or kohya's layout,
Textual Inversion embeddings) load into the same list; each concept has its own scale, and Unload lets it go.

Endpoints: ``/personalize`` (train; streams), ``/personalize_stop``, ``/personalize_render`` (shapes-world
pictures), ``/concepts_load``, ``/concepts_scale``, ``/concepts_unload``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from studio.errors import InvalidInputError, StudioError
from studio.events import (
    CancelToken,
    Event,
    Notice,
    PersonalizeResult,
    TrainingCheckpoint,
    TrainingLoss,
    TrainingSamples,
)
from studio.personalize.data import render_concept_images
from studio.personalize.files import CONCEPT_JSON
from studio.personalize.spec import LORA_LAYERS, METHODS, RANGES, RECIPES, PersonalizeSpec
from studio.plots import line_chart
from studio.shapes.vocabulary import RESERVED_SHAPES
from studio.specs import CONCEPT_SCALE
from studio.ui.form import Field, optional_whole, saved, seed_box, slider, spec_values, text, textbox
from studio.ui.gpu import engine_job
from studio.ui.inputs import public_message
from studio.ui.parts import Tab, instant, model_line, session_id, settings_view
from studio.ui.session_concepts import SESSION_CONCEPTS, concept_rows
from studio.ui.stream import JOB_EVENT, KEYS_HELP, Outputs, done_html, run_and_stop, status_box, stop_button, stream_job

DEFAULTS = PersonalizeSpec.recipe("textual-inversion")
CONCEPTS_DIR = Path("runs/concepts")  # where training writes (app.py --concepts-dir); each run its own folder
METHOD_TITLES = {"textual-inversion": "Textual Inversion", "lora": "LoRA", "dreambooth": "DreamBooth",
                 "custom-diffusion": "Custom Diffusion"}
LORA_LAYER_TITLES = {"attention": "attention projections", "convolutions": "ResNet convolutions",
                     "attention+convolutions": "attention + convolutions"}
# the fields only one method reads, shown while it is picked
METHOD_FIELDS = {"rank": "lora", "lora_layers": "lora", "train_text_encoder": "lora", "prior_preservation": "dreambooth",
                 "prior_weight": "dreambooth", "class_images": "dreambooth", "second_concept": "custom-diffusion",
                 "second_images": "custom-diffusion"}
CONCEPT_COLUMNS = ["concept", "kind", "words", "scale", "file"]


# --------------------------------------------------------------------------------------------
# Pure helpers


def gallery_images(value: Sequence[Any] | None) -> list[Image.Image | tuple[Image.Image, str]]:
    """A gallery's pictures, each with its caption when it has one (the rendered pictures' full captions; an upload
    has none and trains as "a <word>"). Gradio gives (image, caption) pairs; an API caller may give paths or images."""
    images: list[Image.Image | tuple[Image.Image, str]] = []
    for item in value or []:
        picture, caption = (item[0], item[1]) if isinstance(item, (list, tuple)) else (item, None)
        picture = picture if isinstance(picture, Image.Image) else Image.open(picture)
        images.append((picture, caption) if caption else picture)
    return images


def run_folder(root: Path, spec: PersonalizeSpec) -> Path:
    """A new folder for one run's files: the words, the method and the time."""
    return root / f"{'+'.join(spec.words)}-{spec.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def files_in(folder: Path) -> list[str]:
    """The files a run wrote at the top of its folder (the concept files, concept.json)."""
    return [str(path) for path in sorted(folder.iterdir()) if path.is_file()]


def loss_plot(steps: Sequence[int], losses: Sequence[float]) -> Image.Image:
    return line_chart({"loss": (steps, losses)}, x_label="step", y_label="training loss", size=(420, 180))


def method_visibility(method: str) -> list[Any]:
    """What each method reads (METHOD_FIELDS): the rank, layers and text-encoder choice (LoRA), the class-prior loss
    (DreamBooth), the second concept (Custom Diffusion)."""
    return [gr.update(visible=method == owner) for owner in METHOD_FIELDS.values()]


# --------------------------------------------------------------------------------------------
# The form


def _range_slider(name: str, elem_id: str, **options: Any) -> Any:
    return slider(RANGES[name], getattr(DEFAULTS, name), elem_id=elem_id, **options)


def _gallery(label: str, elem_id: str, visible: bool = True) -> Any:
    return lambda engine: gr.Gallery(label=label, type="pil", format="png", columns=5, height=180,
                                     interactive=True, file_types=["image"], object_fit="contain",
                                     elem_id=elem_id, visible=visible)  # captions on one line: the pictures show


FIELDS = (
    Field("images", _gallery("Pictures of the concept (3–10): upload, or render them", "personalize-images"),
          in_spec=False),
    Field("method", lambda engine: gr.Radio([(METHOD_TITLES[m], m) for m in METHODS], value=DEFAULTS.method,
                                            label="Method", elem_id="personalize-method"), str, saved("method")),
    Field("concept", textbox(label="Concept word", value=DEFAULTS.concept, elem_id="personalize-concept",
                             info="the new word: a reserved word (star, heart) or a new one such as <my-star>"),
          text, saved("concept")),
    Field("class_word", textbox(label="Class word", value=DEFAULTS.class_word, elem_id="personalize-class-word",
                                info="what it resembles: starts the new word, and DreamBooth keeps it as it was"),
          text, saved("class_word")),
    Field("second_concept", textbox(label="Second concept word (trained jointly)", value="",
                                    elem_id="personalize-second-concept", visible=False),
          lambda value: text(value).strip() or None, saved("second_concept")),
    Field("second_images", _gallery("Pictures of the second concept", "personalize-second-images", visible=False),
          in_spec=False),
    Field("steps", _range_slider("steps", "personalize-steps", maximum=1000), int, saved("steps", RANGES["steps"])),
    Field("learning_rate", lambda engine: gr.Number(DEFAULTS.learning_rate, label="Learning rate",
                                                    minimum=RANGES["learning_rate"].low,
                                                    maximum=RANGES["learning_rate"].high,
                                                    elem_id="personalize-learning-rate"),
          float, saved("learning_rate", RANGES["learning_rate"])),
    Field("rank", lambda engine: gr.Slider(RANGES["rank"].low, 64, value=RECIPES["lora"]["rank"], step=1,
                                           label="LoRA rank", visible=False, elem_id="personalize-rank"),
          int, saved("rank", RANGES["rank"])),
    Field("lora_layers", lambda engine: gr.Dropdown([(LORA_LAYER_TITLES[layers], layers) for layers in LORA_LAYERS],
                                                    value=RECIPES["lora"]["lora_layers"], label="LoRA layers",
                                                    visible=False, elem_id="personalize-lora-layers"),
          str, saved("lora_layers")),
    Field("train_text_encoder", lambda engine: gr.Checkbox(label="LoRA on the text encoder too", value=False,
                                                           visible=False, elem_id="personalize-text-encoder"),
          bool, saved("train_text_encoder")),
    Field("prior_preservation", lambda engine: gr.Checkbox(label="Prior preservation (class images)",
                                                           value=DEFAULTS.prior_preservation, visible=False,
                                                           elem_id="personalize-prior"),
          bool, saved("prior_preservation")),
    Field("prior_weight", _range_slider("prior_weight", "personalize-prior-weight", visible=False), float,
          saved("prior_weight", RANGES["prior_weight"])),
    Field("class_images", _range_slider("class_images", "personalize-class-images", maximum=32, visible=False), int,
          saved("class_images", RANGES["class_images"])),
    Field("sample_every", _range_slider("sample_every", "personalize-sample-every", maximum=200), int, saved("sample_every", RANGES["sample_every"])),
    Field("seed", seed_box("personalize-seed"), optional_whole, saved("seed", RANGES["seed"])),
)


def form_spec(values: Mapping[str, Any]) -> PersonalizeSpec:
    """The typed spec of the form's values (checked by the job: ranges, words)."""
    parsed = spec_values(FIELDS, values)
    if parsed.get("seed") is None:
        parsed["seed"] = DEFAULTS.seed
    return PersonalizeSpec(**parsed)


# --------------------------------------------------------------------------------------------
# The tab


class PersonalizeTab(Tab):
    """The Personalize tab (the shape of every tab: `parts.Tab`): training as a streamed job, and this session's
    concepts."""

    name = "personalize"
    fields = FIELDS

    def __init__(self, engine: Any, concepts_dir: Path = CONCEPTS_DIR) -> None:
        self.concepts_dir = concepts_dir
        super().__init__(engine)

    # 1. layout ---------------------------------------------------------------------------
    def layout(self) -> None:
        form = self.form
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=340):
                form.place("images")
                with gr.Row(visible=bool(self.renders), elem_id="personalize-render-row"):
                    self.render_count = gr.Slider(3, 10, value=6, step=1, label="Pictures to render",
                                                  elem_id="personalize-render-count")
                    self.render_button = gr.Button("Render from the shapes world", size="sm",
                                                   elem_id="personalize-render")
                form.place("method")
                with gr.Row():
                    form.place("concept", "class_word")
                with gr.Row():
                    form.place("second_concept")
                form.place("second_images")
                self.go, self.stop = run_and_stop("Train", "personalize-btn", "personalize-stop")
                with gr.Row():
                    form.place("steps", "learning_rate")
                with gr.Row():
                    form.place("rank", "lora_layers", "train_text_encoder")
                with gr.Row():
                    form.place("prior_preservation", "prior_weight", "class_images")
                with gr.Row():
                    form.place("sample_every", "seed")
            with gr.Column(scale=6, min_width=360):
                self.status = status_box("personalize-status")
                with gr.Row(equal_height=False):
                    self.loss_view = gr.Image(label="Training loss", format="png", interactive=False, buttons=[],
                                              elem_id="personalize-loss", height=220)
                    self.samples = gr.Gallery(label="Samples at fixed seeds", format="png", columns=4, height=220,
                                              object_fit="contain", elem_id="personalize-samples")
                with gr.Row(equal_height=False):
                    self.files = gr.File(label="Concept files", file_count="multiple", elem_id="personalize-files")
                    self.settings = settings_view("personalize-settings", "Settings of this training", height=200)
        self.concepts_panel()
        gr.Markdown(
            f"{model_line(self.engine)} · {KEYS_HELP}. A trained concept is added to this session's concepts: its word "
            "works in every tab (Generate, Structure, SDEdit, DiffEdit, Prompt-to-Prompt, inversion captions).",
            elem_id="personalize-help")

    def concepts_panel(self) -> None:
        """This session's concepts: the table, a scale per concept, Unload, and a user's file to load."""
        with gr.Group(elem_id="personalize-concepts"):
            gr.Markdown("**Concepts this session uses** (every tab's jobs run with them)")
            self.concept_table = gr.Dataframe(headers=CONCEPT_COLUMNS, value=[], interactive=False, type="array",
                                              elem_id="personalize-concept-table")
            with gr.Row(equal_height=False):
                self.concept_pick = gr.Dropdown([], label="Concept", elem_id="personalize-concept-pick")
                self.concept_scale = gr.Slider(CONCEPT_SCALE.low, CONCEPT_SCALE.high, value=1.0,
                                               step=CONCEPT_SCALE.step, label=CONCEPT_SCALE.label,
                                               elem_id="personalize-concept-scale")
                with gr.Column(min_width=120):
                    self.scale_button = gr.Button("Set scale", size="sm", elem_id="personalize-set-scale")
                    self.unload_button = gr.Button("Unload", size="sm", variant="stop",
                                                   elem_id="personalize-unload")
            with gr.Row(equal_height=False):
                self.concept_file = gr.File(label="Load a LoRA or an embedding (.safetensors, .pt, .bin)",
                                            file_types=[".safetensors", ".pt", ".bin"], type="filepath",
                                            elem_id="personalize-concept-file", height=130)
                self.concept_token = gr.Textbox(label="Its word (embeddings without one, e.g. kohya's emb_params)",
                                                elem_id="personalize-concept-token")
                self.load_button = gr.Button("Load", size="sm", elem_id="personalize-load")
            self.concepts_note = gr.Markdown(elem_id="personalize-concepts-note")

    @property
    def renders(self) -> tuple[str, ...]:
        """The reserved shapes the renderer can draw for this model (the shapes world's, when it is the model)."""
        return tuple(word for word in RESERVED_SHAPES if word in self.engine.model_limits.reserved_words)

    # 2. handlers -------------------------------------------------------------------------
    def run(self, request: gr.Request, images: Sequence[Any] | None = None, second_images: Sequence[Any] | None = None,
            **values: Any) -> Iterator[Outputs]:
        """Train a concept from the pictures; streams progress with time left, the loss and samples, then the
        concept's files, loaded and added to this session's concepts.

        Parameters:
            images: 3-10 pictures of the concept
            second_images: 3-10 pictures of the second concept (Custom Diffusion with a second concept word)
        Returns:
            status: the progress line (HTML)
            loss_view: the loss curve so far
            samples: the latest samples at fixed seeds
            files: the concept's files (when done, or the checkpoint kept when stopped)
            settings: the run's settings and measurements
        """
        session = session_id(request)
        losses: tuple[list[int], list[float]] = ([], [])
        sample_prompts: list[str] = []
        out: dict[str, Path] = {}  # the run's folder, known once the form is checked

        def start(cancel: CancelToken) -> Iterator[Event]:
            spec = form_spec(values)
            owners = self.engine.concepts.word_owners()
            if taken := [word for word in spec.words if word in owners]:
                raise InvalidInputError(f"{taken[0]!r} is the word of the loaded concept {owners[taken[0]]!r}: unload it "
                                        "first (below) to train it again, or pick another word.")
            out["folder"] = run_folder(self.concepts_dir, spec)
            return engine_job(self.engine, "personalize", spec, gallery_images(images), out["folder"], cancel=cancel,
                              second_images=gallery_images(second_images))

        def render(event: Event) -> Outputs | None:
            if isinstance(event, Notice):
                gr.Info(event.text)
                return None
            if isinstance(event, TrainingLoss):
                losses[0].append(event.step)
                losses[1].append(event.loss)
                return {self.loss_view: loss_plot(*losses)}
            if isinstance(event, TrainingSamples):
                sample_prompts[:] = event.prompts
                return {self.samples: list(zip(event.images, event.prompts))}
            if isinstance(event, TrainingCheckpoint):
                return {self.files: files_in(event.folder)}
            if isinstance(event, PersonalizeResult):  # the result writes every result component (their plain labels)
                samples = list(zip(event.images, sample_prompts)) if event.images else gr.skip()
                return {self.loss_view: loss_plot(*losses), self.samples: samples,
                        self.files: [str(path) for path in event.files], self.settings: event.settings,
                        self.status: done_html(f"Taught {', '.join(event.words)} ({METHOD_TITLES[event.method]}) "
                                               f"in {event.seconds:.0f} s: it works in every tab now")}
            return None

        def partial() -> Outputs:
            """Stopped: the checkpoint the job saved on its way out, loaded for this session (Stop's thread waits
            for the job to let the model go)."""
            return self.adopt(session, out["folder"]) if out else {}

        yield from stream_job(self.name, request, self.status, start, render, "Training", results=self.results,
                              partial=partial)
        # finished (a stopped run's handler ends at Stop, whose partial() adopts the checkpoint)
        if out and (out["folder"] / CONCEPT_JSON).is_file():
            yield self.adopt(session, out["folder"])

    def adopt(self, session: str, folder: Path) -> Outputs:
        """Load what training wrote into the engine and add it to the session's concepts; the note says so."""
        if not (folder / CONCEPT_JSON).is_file():
            return {self.concepts_note: "Stopped before the first checkpoint: nothing was saved."}
        try:
            info = self.engine.concepts.load(folder)
        except StudioError as error:
            return {self.concepts_note: public_message(f"The files in {folder.name} did not load: {error}")}
        SESSION_CONCEPTS.add(session, info.name)
        return {**self.concept_outputs(session), self.files: files_in(folder),
                self.concepts_note: f"'{info.name}' ({info.kind}, {folder.name}) is in this session's concepts: "
                                    f"{', '.join(info.words)} works in every tab now."}

    @property
    def results(self) -> dict[Any, str]:
        return {self.loss_view: "Training loss", self.samples: "Samples at fixed seeds", self.files: "Concept files"}

    def render_pictures(self, concept: str, count: int, seed: int | None) -> list[tuple[Image.Image, str]]:
        """Pictures of a reserved shape from the shapes world, captioned with the concept word (no model work).

        Parameters:
            concept: the concept word: a reserved shape (star, heart) is drawn as itself
            count: how many pictures (3-10)
            seed: the renderer's seed
        """
        shape = concept.strip().lower()
        if shape not in self.renders:
            raise gr.Error(f"The shapes world draws {', '.join(self.renders) or 'nothing for this model'}: type one of "
                           "them as the concept word, or upload pictures.")
        return render_concept_images(shape, int(count), seed=int(seed or 0))

    def concept_outputs(self, session: str) -> Outputs:
        rows = concept_rows(self.engine, session)
        names = [row[0] for row in rows]
        return {self.concept_table: rows,
                self.concept_pick: gr.update(choices=names, value=names[-1] if names else None)}

    def load_concept(self, request: gr.Request, file: str | None, token: str | None = None) -> Outputs:
        """Load a user's LoRA or embedding file into this session's concepts.

        Parameters:
            file: a LoRA (diffusers or kohya layout) or a Textual Inversion embedding (diffusers, A1111, kohya)
            token: the word of an embedding file that names none (kohya's emb_params): default the file's name
        """
        if not file:
            raise gr.Error("Choose a LoRA or embedding file to load.")
        try:
            info = self.engine.concepts.load(Path(file), token=(token or "").strip() or None)
        except StudioError as error:
            raise gr.Error(public_message(str(error))) from error
        SESSION_CONCEPTS.add(session_id(request), info.name)
        words = f" (word {', '.join(info.words)})" if info.words else ""
        return {**self.concept_outputs(session_id(request)),
                self.concepts_note: f"Loaded {info.kind} '{info.name}'{words} from {Path(file).name}."}

    def set_scale(self, request: gr.Request, concept: str | None, scale: float) -> Outputs:
        """Set a concept's scale for this session's jobs (0 turns it off; negative pushes away from it).

        Parameters:
            concept: the concept's name in the table
            scale: its weight, as A1111's <lora:name:weight>
        """
        try:
            SESSION_CONCEPTS.set_scale(session_id(request), concept or "", float(scale))
        except KeyError:
            raise gr.Error("Pick a concept of this session first.") from None
        except InvalidInputError as error:
            raise gr.Error(public_message(str(error))) from error
        return {**self.concept_outputs(session_id(request)), self.concepts_note: f"'{concept}' at scale {scale:g}."}

    def picked_scale(self, request: gr.Request, concept: str | None) -> Any:
        """The scale slider shows the picked concept's scale in this session."""
        scales = {use.name: use.scale for use in SESSION_CONCEPTS.uses(session_id(request))}
        return scales.get(concept or "", gr.skip())

    def unload(self, request: gr.Request, concept: str | None) -> Outputs:
        """Stop using a concept in this session (the engine lets it go when no session uses it).

        Parameters:
            concept: the concept's name in the table
        """
        if not concept:
            raise gr.Error("Pick a concept of this session first.")
        if SESSION_CONCEPTS.remove(session_id(request), concept):
            self.engine.concepts.unload(concept)
        return {**self.concept_outputs(session_id(request)), self.concepts_note: f"Unloaded '{concept}'."}

    # 3. events ---------------------------------------------------------------------------
    def wire(self) -> None:
        form = self.form
        self.run_event = self.go.click(
            self.run, inputs_kwargs=form.inputs, api_name="personalize",
            outputs=[self.status, self.loss_view, self.samples, self.files, self.settings, self.concept_table,
                     self.concept_pick, self.concepts_note], **JOB_EVENT)
        stop_button(self.stop, self.status, [self.run_event], tab=self.name, api_name="personalize_stop",
                    results=[self.loss_view, self.samples, self.files, self.concept_table, self.concept_pick,
                             self.concepts_note])
        form["method"].change(lambda method: [*method_visibility(method), *self.recipe_values(method)], form["method"],
                              [*form.components(list(METHOD_FIELDS)), form["steps"], form["learning_rate"]],
                              **instant("personalize-view"))
        self.render_button.click(self.render_pictures, [form["concept"], self.render_count, form["seed"]],
                                 form["images"], api_name="personalize_render", concurrency_limit=None,
                                 concurrency_id="personalize-render", show_progress="hidden")
        concept_outputs = [self.concept_table, self.concept_pick, self.concepts_note]
        self.concept_pick.change(self.picked_scale, self.concept_pick, self.concept_scale, **instant("personalize-view"))
        self.load_button.click(self.load_concept, [self.concept_file, self.concept_token], concept_outputs,
                               api_name="concepts_load", concurrency_id="concepts")
        self.scale_button.click(self.set_scale, [self.concept_pick, self.concept_scale], concept_outputs,
                                api_name="concepts_scale", concurrency_id="concepts")
        self.unload_button.click(self.unload, [self.concept_pick], concept_outputs, api_name="concepts_unload",
                                 concurrency_id="concepts")

    @staticmethod
    def recipe_values(method: str) -> list[Any]:
        """A method's recipe steps and learning rate, set when the method is picked."""
        recipe = PersonalizeSpec.recipe(method)
        return [recipe.steps, recipe.learning_rate]
