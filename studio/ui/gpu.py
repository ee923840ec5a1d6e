"""Every tab's engine job, on a ZeroGPU Space too: `engine_job(engine, "generate", spec, ..., cancel=cancel)`.

Off ZeroGPU (a local app, a CPU or GPU Space) it is the engine call itself. On ZeroGPU (`SPACES_ZERO_GPU` set and
the `spaces` package installed, see `prepare`) a GPU is lent per call: the job runs inside `spaces.GPU` in a worker
process forked from this one, which holds the model on CUDA as the web process loaded it. What crosses to the worker
is pickled (the entry point's name, the spec, images, arrays, an inversion), and so is every event coming back; the
engine itself stays behind, found in the worker's copy of this module's state (`_ENGINES`). So:

- the job's input checks and its cost cap (studio.costs) run here, in the web process, exactly as off ZeroGPU: the
  entry point is called, its job read for its cost and closed unstarted, then the same call runs in the worker;
- the duration asked for is the job's cost in standard images times `SECONDS_PER_UNIT`;
- a CancelToken cannot cross the fork: Stop's token is watched here between events, and closing the worker's stream
  makes `spaces` stop the worker's generator at its next event (the engine unwinds its lock there);
- a StudioError in the worker comes back as a `WorkerError` event (spaces passes only gr.Error through) and is raised
  here as StudioError with the same message.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.errors import CancelledError, StudioError

if TYPE_CHECKING:
    from studio.costs import JobCost
    from studio.engine import Engine
    from studio.events import CancelToken, Event

log = logging.getLogger(__name__)

# Seconds of ZeroGPU time per standard image (studio.costs: one SD 1.5 512-px 50-step CFG image). A whole H200 made one
# in 1.39 s (bench/results/sd15_costs_cuda.md, float16). A ZeroGPU device is a slice of one: the `spaces` 0.51
# package's own defaults (spaces/config.py: ZEROGPU_CUDA_DEVICE_NAME "NVIDIA H200 MIG 3g.71gb",
# ZEROGPU_CUDA_MULTI_PROCESSOR_COUNT 60). 4 s, about 3x the whole GPU's time, leaves room for the slice, the first
# call's CUDA warm-up and the attention maps some jobs capture; it is an allowance, not a ZeroGPU measurement.
SECONDS_PER_UNIT = 4.0
START_SECONDS = 10.0  # the worker's fork and its move of the model to the GPU, before the first step
UNKNOWN_COST_SECONDS = 60.0  # spaces' own default, for a job that does not state its cost

_ENGINES: dict[int, Engine] = {}  # the engines jobs run on, by id: the worker finds its copy here
_gpu_task: Callable[..., Iterator[Any]] | None = None  # the spaces.GPU-wrapped worker job, once prepare() found ZeroGPU


@dataclass(frozen=True)
class WorkerError:
    """A StudioError raised in the worker, carried back as an event (its message is the user's)."""

    message: str


def gpu_seconds(units: float | None) -> int:
    """The ZeroGPU duration to ask for a job of `units` standard images (JobCost.units; None: a job that does not
    state its cost). Whole seconds: what spaces.GPU takes."""
    if units is None:
        return int(UNKNOWN_COST_SECONDS)
    return math.ceil(START_SECONDS + SECONDS_PER_UNIT * units)


def prepare() -> bool:
    """On a ZeroGPU Space, import `spaces` (it must come before anything touches CUDA) and wrap the worker job in
    `spaces.GPU` (it must be wrapped before launch: spaces reports its GPU functions at startup). True when jobs will
    run on ZeroGPU; off ZeroGPU, or without the package, jobs call the engine directly."""
    global _gpu_task
    _gpu_task = None
    if (os.environ.get("SPACES_ZERO_GPU") or "").strip().lower() not in ("1", "t", "true"):
        return False
    try:
        import spaces
    except ImportError:
        log.warning("SPACES_ZERO_GPU is set but the `spaces` package is not installed: jobs run without ZeroGPU "
                    "(pip install spaces).")
        return False
    _gpu_task = spaces.GPU(duration=_duration)(_run_in_worker)
    return True


def engine_job(engine: Engine, entry: str, *args: Any, cancel: CancelToken | None = None,
               **kwargs: Any) -> Iterator[Event]:
    """`getattr(engine, entry)(*args, cancel=cancel, **kwargs)`: the job's events, its input checked here (a
    StudioError raised before any model work, as the engine raises it). On ZeroGPU the job runs in the GPU worker."""
    job = getattr(engine, entry)(*args, cancel=cancel, **kwargs)
    if _gpu_task is None:
        return job
    cost = getattr(job, "cost", None)
    job.close()  # checked and never started: the worker runs the same call
    _ENGINES[id(engine)] = engine
    return _from_worker(_gpu_task(id(engine), entry, args, kwargs, cost), cancel)


def _from_worker(events: Iterator[Any], cancel: CancelToken | None) -> Iterator[Event]:
    """The worker's events, as the engine's own would come: a WorkerError raised as StudioError, Stop's token obeyed
    between events (CancelledError, as the engine raises it)."""
    done = total = 0
    try:
        for event in events:
            if isinstance(event, WorkerError):
                raise StudioError(event.message)
            done, total = getattr(event, "step", done), getattr(event, "total", total)
            if cancel is not None and cancel.cancelled:
                raise CancelledError(f"Cancelled after {done} of {total} steps.")
            yield event
    finally:
        events.close()  # spaces sets its stop event: the worker closes the engine's generator at its next event


def _duration(engine_key: int, entry: str, args: tuple, kwargs: dict, cost: JobCost | None) -> int:
    """spaces.GPU's duration, called with the worker job's arguments."""
    return gpu_seconds(None if cost is None else cost.units)


def _run_in_worker(engine_key: int, entry: str, args: tuple, kwargs: dict, cost: JobCost | None) -> Iterator[Any]:
    """The job in the GPU worker, on the worker's copy of the engine (its cancel is the web process's to watch)."""
    try:
        yield from getattr(_ENGINES[engine_key], entry)(*args, **kwargs)
    except CancelledError:
        return
    except StudioError as error:
        yield WorkerError(str(error))
