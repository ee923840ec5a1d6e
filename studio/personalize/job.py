"""The Personalize job: check the run's inputs, then train on copies of the resident model with it to itself.

Engine.personalize calls `personalize`; the same loop (studio.personalize.training) runs from `studio train <method>`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from studio.costs import ADAPTER_TRAINING_PASSES, FULL_TRAINING_PASSES, JobCost
from studio.errors import InvalidInputError
from studio.events import CancelToken, Event, Notice, PersonalizeResult, Progress
from studio.images import ImageInput
from studio.jobs import ModelHost, Stopwatch, image_record, reproduction_record
from studio.personalize import files
from studio.personalize.data import ImageWithCaption, TrainingImage, training_images
from studio.personalize.methods import copy_parts
from studio.personalize.spec import PersonalizeSpec, check_concept_word
from studio.personalize.training import SAMPLE_SEEDS, SAMPLE_STEPS, train


def check_inputs(host: ModelHost, spec: PersonalizeSpec, images: Sequence[ImageInput | ImageWithCaption],
                 second_images: Sequence[ImageInput | ImageWithCaption] = ()) -> tuple[list[TrainingImage], list[str]]:
    """The run's training images (RGB at the model's native size) and the notes on how they were converted; raises
    InvalidInputError for a bad spec, a word the model already draws, an unknown class word or too few images."""
    spec.validate()
    for word in spec.words:
        check_concept_word(word, host.model.tokenizer, spec.method)
    for class_word in set(spec.class_words):
        host.tokenize(class_word, label="Class word")  # an unknown word is refused by name
    notices: list[str] = []
    instances = training_images(images, spec.concept, host.native_size, notices)
    if spec.second_concept is not None:
        instances += training_images(second_images, spec.second_concept, host.native_size, notices)
    elif second_images:
        raise InvalidInputError("Images for a second concept were given without a second concept word.")
    return instances, notices


def personalize(host: ModelHost, spec: PersonalizeSpec, images: Sequence[ImageInput | ImageWithCaption], out: Path,
                cancel: CancelToken | None = None,
                second_images: Sequence[ImageInput | ImageWithCaption] = ()) -> Iterator[Event]:
    """Train `spec.method` on `images` (3-10, each an image or an (image, caption) pair; uncaptioned ones are "a
    <word>") into the folder `out`; Custom Diffusion's second concept trains on `second_images`. Inputs are checked
    before any model work; the training streams Progress, TrainingLoss, TrainingSamples and TrainingCheckpoint, and
    ends with a PersonalizeResult. The resident model is never changed: the run trains copies of its modules."""
    instances, notices = check_inputs(host, spec, images, second_images)
    return host.exclusive(_run(host, spec, instances, notices, Path(out), cancel), spec.steps, cancel,
                          f"{spec.method} training at batch size {spec.batch_size}",
                          training_cost(spec, host.native_size))


def training_cost(spec: PersonalizeSpec, size: int) -> JobCost:
    """A training step's passes over its batch (gradient accumulation's micro-batches included): a forward and a
    backward pass (studio.costs), DreamBooth's class-prior batch beside the instances' doubling them; plus what the
    run samples, as passes spread over its steps: the previews every `sample_every` steps (each word at each fixed
    seed) and DreamBooth's class images, each SAMPLE_STEPS steps of CFG (2 passes) -- at sample_every=1 or 200
    class images these are most of the run."""
    dreambooth = spec.method == "dreambooth"
    passes = FULL_TRAINING_PASSES if dreambooth else ADAPTER_TRAINING_PASSES
    prior = 2 if dreambooth and spec.prior_preservation else 1
    batch = spec.batch_size * spec.gradient_accumulation
    previews = (spec.steps // spec.sample_every + 1) * len(spec.words) * len(SAMPLE_SEEDS) if spec.sample_every else 0
    drawn = previews + (spec.class_images if dreambooth and spec.prior_preservation else 0)
    sampling = drawn * SAMPLE_STEPS * 2 / (spec.steps * batch)  # per step and image of the training batch
    return JobCost(size, size, spec.steps, batch, passes * prior + sampling)


def _run(host: ModelHost, spec: PersonalizeSpec, instances: list[TrainingImage], notices: list[str], out: Path,
         cancel: CancelToken | None) -> Iterator[Event]:
    for text in notices:
        yield Notice(text)
    stopwatch = Stopwatch()
    yield Progress(0, spec.steps, "Copying the model to train…")
    parts = copy_parts(host.model, spec)
    base = {"name": host.model_name, "fingerprint": files.base_fingerprint(host.model)}
    stopwatch.lap("setup")
    outcome = yield from train(parts, spec, instances, out, base, cancel)
    stopwatch.lap("training")
    settings = reproduction_record(host, "personalize", asdict(spec), stopwatch.timings(), None,
                                   images=[image_record(i.image) for i in instances],
                                   captions=[i.caption for i in instances], folder=str(out))
    yield PersonalizeResult(
        images=outcome.samples, settings=settings, timings=stopwatch.timings(), seed=spec.seed, folder=out,
        files=outcome.files, method=spec.method, words=spec.words, steps=outcome.steps, seconds=outcome.seconds,
        peak_memory_bytes=outcome.peak_memory_bytes, final_loss=outcome.final_loss,
    )
