"""The engine: one resident model, one job at a time, every job a generator of typed events.

    engine = Engine()                      # embedded model, best device
    for event in engine.generate(GenerateSpec("a red circle on the left", seed=1)):
        ...                                # Progress, Preview, AttentionMaps, then one GenerationResult

A thin facade: the model, the fair lock, tokenize/encode (and the null conditioning) and
`exclusive(job)`. The jobs are modules (studio.generation, studio.editing.*, studio.inversion) that
take the engine as their studio.jobs.ModelHost; the entry points below only forward to them, each through
`_host(spec)`: the engine as that job sees it, with the spec's loaded concepts (engine.concepts, a LoRA or an
embedding) applied while the job holds the model (studio.personalize.concepts).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from studio import generation
from studio.conditioning import Cond, Tokens, encode, tokenize, zeroed
from studio.costs import JobCost
from studio.editing.diffedit import DiffEditSpec, diffedit, diffedit_mask
from studio.editing.p2p import P2PSpec, prompt_to_prompt
from studio.editing.sdedit import SDEditSpec, sdedit
from studio.errors import DeviceOutOfMemoryError, InvalidInputError, UnknownWordError
from studio.events import CancelToken, Event, Progress
from studio.fair_lock import FairLock
from studio.generation import GuidancePlan
from studio.images import ImageInput
from studio.inversion import Inversion, InversionSpec, invert
from studio.model_limits import ModelLimits, model_limits
from studio.models import EMBEDDED_MODEL_DIR, LoadedModel, load_model
from studio.personalize.concepts import ConceptRegistry, JobHost
from studio.specs import ConceptUse, GenerateSpec
from studio.structure.spec import StructureImages

if TYPE_CHECKING:  # training is imported when a personalization runs
    from studio.personalize.spec import PersonalizeSpec


class CostedJob(Iterator[Event]):
    """A job's event stream (what Engine.exclusive returns) carrying its cost: ZeroGPU sizes the GPU time it asks
    for from it (studio.ui.gpu) before the job starts."""

    def __init__(self, events: Generator[Event, None, None], cost: JobCost) -> None:
        self._events = events
        self.cost = cost

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Unwind the job (its turn on the model, its attention processors): what a generator's close() does."""
        self._events.close()


class Engine:
    """Loads a model once (see studio.models for sources and device policy) and runs jobs on it."""

    def __init__(self, source: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
                 offload: bool = False, compile_unet: bool = False, controls: Sequence[str | Path] = (),
                 ip_adapter: str | Path | None = None, image_encoder: str | Path | None = None,
                 max_job_cost: float | None = None):
        """controls / ip_adapter / image_encoder: structure control files for the model (studio.models.load_model);
        the embedded model also loads the controls shipped with it. max_job_cost: the most a job may cost, in
        standard images (studio.costs); None lets any job run."""
        self.model: LoadedModel = load_model(source, device, dtype, offload=offload, compile_unet=compile_unet,
                                             controls=controls, ip_adapter=ip_adapter, image_encoder=image_encoder)
        self.max_job_cost = max_job_cost
        self._lock = FairLock()
        self.concepts = ConceptRegistry(self.model, self._lock.hold)
        # the model's folder, where its card is: the embedded model's, or a local diffusers folder (not a file or hub id)
        self.folder: Path | None = EMBEDDED_MODEL_DIR if source is None else (
            Path(source).expanduser() if Path(source).expanduser().is_dir() else None)

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def native_size(self) -> int:
        return self.model.native_size

    @property
    def size_multiple(self) -> int:
        return self.model.size_multiple

    @property
    def prediction_type(self) -> str:
        return self.model.prediction_type

    @cached_property
    def model_limits(self) -> ModelLimits:
        """Native size, vocabulary, reserved words and model card, for the UI (studio.model_limits)."""
        return model_limits(self.model_name, self.model.tokenizer, self.native_size, self.size_multiple, self.folder)

    @property
    def jobs_waiting(self) -> int:
        return self._lock.waiting

    @property
    def classifier_targets(self) -> list[str]:
        """Classes classifier guidance can steer towards; empty when the model has no classifier."""
        return list(self.model.classifier.targets) if self.model.classifier is not None else []

    def guidance_plan(self, spec: GenerateSpec) -> GuidancePlan:
        """Per-step guidance weights of `spec`, without model work (studio.generation)."""
        return generation.guidance_plan(self, spec)

    def _host(self, concepts: tuple[ConceptUse, ...]) -> Engine | JobHost:
        """What a job runs on: with no concept loaded the engine itself (a job is exactly as before concepts
        existed); else a JobHost applying `concepts` (checked here: InvalidInputError for an unknown name or a
        scale out of range) during the job and refusing the words of loaded concepts it does not use."""
        if not concepts and not self.concepts:
            return self
        return JobHost(self, self.concepts.resolve(concepts))

    def concept_records(self) -> list[dict[str, Any]]:
        """The concepts a job on the engine itself runs with: none (a JobHost's are its own)."""
        return []

    def personalize(self, spec: PersonalizeSpec, images: Sequence[ImageInput], out: Path,
                    cancel: CancelToken | None = None, second_images: Sequence[ImageInput] = ()) -> Iterator[Event]:
        """Teach the model a concept from a few images (studio.personalize.job); the files land in `out`, loadable
        with `concepts.load(out)`."""
        # training pulls in accelerate: imported only when asked
        from studio.personalize.job import personalize

        return personalize(self, spec, images, out, cancel, second_images)

    def p2p(self, spec: P2PSpec, inversion: Inversion | None = None, structure_images: StructureImages | None = None,
            cancel: CancelToken | None = None) -> Iterator[Event]:
        """Prompt-to-Prompt edit of a generated image, or of `inversion` (studio.editing.p2p); `structure_images`
        carry the maps of `spec.structure` (an inversion made under structure brings its own)."""
        return prompt_to_prompt(self._host(spec.concepts), spec, inversion, structure_images, cancel)

    def sdedit(self, spec: SDEditSpec, guide: ImageInput | None, mask: np.ndarray | None = None,
               original: ImageInput | None = None, structure_images: StructureImages | None = None,
               cancel: CancelToken | None = None) -> Iterator[Event]:
        """SDEdit of a stroke drawing or image, masked when `mask` is given (studio.editing.sdedit), steered by
        `spec.structure` with its maps in `structure_images`."""
        return sdedit(self._host(spec.concepts), spec, guide, mask, original, structure_images, cancel)

    def diffedit_mask(self, spec: DiffEditSpec, image: ImageInput | None = None, inversion: Inversion | None = None,
                      cancel: CancelToken | None = None) -> Iterator[Event]:
        """DiffEdit Stage I: the edit mask, streamed as it accumulates (studio.editing.diffedit)."""
        return diffedit_mask(self._host(spec.concepts), spec, image, inversion, cancel)

    def diffedit(self, spec: DiffEditSpec, image: ImageInput | None = None, mask: np.ndarray | None = None,
                 inversion: Inversion | None = None, structure_images: StructureImages | None = None,
                 cancel: CancelToken | None = None) -> Iterator[Event]:
        """DiffEdit: Stage II with `mask`, or Stages I and II without (studio.editing.diffedit); `spec.structure`
        (maps in `structure_images`) steers Stage II."""
        return diffedit(self._host(spec.concepts), spec, image, mask, inversion, structure_images, cancel)

    def invert(self, spec: InversionSpec, image: ImageInput | None, structure_images: StructureImages | None = None,
               cancel: CancelToken | None = None) -> Iterator[Event]:
        """Map a real image into the model's latent trajectory, under `spec.structure` (maps in `structure_images`)
        when given; ends with an InversionResult (studio.inversion)."""
        return invert(self._host(spec.concepts), spec, image, structure_images, cancel)

    def generate(self, spec: GenerateSpec, structure_images: StructureImages | None = None,
                 cancel: CancelToken | None = None) -> Iterator[Event]:
        """Text to image (studio.generation), steered by `spec.structure` with its maps and reference image in
        `structure_images`. Bad input raises InvalidInputError here, before any model work; the returned generator
        waits for its turn on the model, then streams the job's events."""
        return generation.generate(self._host(spec.concepts), spec, structure_images, cancel)

    def exclusive(self, job: Iterator[Event], total_steps: int, cancel: CancelToken | None, workload: str,
                  cost: JobCost) -> Iterator[Event]:
        """Run `job` (an un-started generator of events) with the model to itself. Raises JobTooCostlyError here,
        before the job waits, when `cost` is over max_job_cost; the returned generator waits its turn (announced by
        a Progress event) and turns a device out-of-memory error into DeviceOutOfMemoryError naming `workload`
        ("512x512 with batch size 4"), leaving the engine usable. Every engine job (generate, invert, edit, train)
        goes through here."""
        cost.check(self.max_job_cost)
        return CostedJob(self._run_exclusive(job, total_steps, cancel, workload), cost)

    def _run_exclusive(self, job: Iterator[Event], total_steps: int, cancel: CancelToken | None,
                       workload: str) -> Iterator[Event]:
        if self._lock.busy:
            yield Progress(0, total_steps, "Waiting for the previous job to finish…")
        with self._lock.hold(cancel):
            try:
                yield from job
            except torch.cuda.OutOfMemoryError as error:
                torch.cuda.empty_cache()  # give the failed job's memory back so the next one can run
                raise DeviceOutOfMemoryError(
                    f"The {self.device} device ran out of memory at {workload}: "
                    "lower the size, the batch size or the number of images and try again."
                ) from error

    def tokenize(self, prompt: str, label: str = "") -> Tokens:
        """Tokens of a prompt, checked (unknown words, length); `label` ("Target prompt") prefixes errors."""
        try:
            return tokenize(self.model.tokenizer, prompt, self.model_name, self.model.tokenizer_2,
                            self.concepts.expansions())
        except UnknownWordError as error:
            raise UnknownWordError(error.words, self.model_name, label) from None
        except InvalidInputError as error:
            raise InvalidInputError(f"{label}: {error}" if label else str(error)) from None

    def encode_prompt(self, tokens: Tokens) -> Cond:
        return encode(self.model.text_encoder, tokens, text_encoder_2=self.model.text_encoder_2)

    def encode_negative_prompt(self, tokens: Tokens) -> Cond:
        """The unconditional branch: the negative prompt's embedding, or SDXL's zeros for an empty one."""
        cond = self.encode_prompt(tokens)
        return zeroed(cond) if self.model.zeros_for_empty_negative and not tokens.words else cond

    def null_conditioning(self) -> Cond:
        """The empty prompt's unconditional branch, as every job's CFG uses it."""
        return self.encode_negative_prompt(self.tokenize(""))
