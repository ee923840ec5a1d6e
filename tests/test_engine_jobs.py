"""Protects: jobs stream the promised events, can be cancelled leaving the engine usable, run one at a
time in arrival order, and a Result's settings make the same images again."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from studio.errors import CancelledError, DeviceOutOfMemoryError
from studio.events import AttentionMaps, CancelToken, GenerationResult, Preview, Progress, Result
from studio.fair_lock import FairLock
from studio.jobs import resolve_seed
from studio.specs import SEED, GenerateSpec

FAST = {"steps": 5, "preview_every": 2}


def test_job_streams_progress_each_step_previews_and_ends_with_one_result(tiny_engine):
    events = list(tiny_engine.generate(GenerateSpec("a red circle", seed=1, **FAST)))
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3, 4, 5]
    assert [e.step for e in events if isinstance(e, Preview)] == [2, 4]  # none at the last: the Result is it
    assert not any(isinstance(e, AttentionMaps) for e in events)  # capture is off by default
    assert isinstance(events[-1], Result) and sum(isinstance(e, Result) for e in events) == 1
    assert events[-1].images[0].size == (tiny_engine.native_size, tiny_engine.native_size)


def test_random_seed_is_reported_and_settings_reproduce_the_images(tiny_engine):
    first = list(tiny_engine.generate(GenerateSpec("a small blue square on the right", seed=None, **FAST)))[-1]
    assert isinstance(first.settings["seed"], int)
    again = list(tiny_engine.generate(GenerateSpec.from_settings(first.settings)))[-1]
    np.testing.assert_array_equal(first.pixels, again.pixels)
    for key in ("model", "scheduler", "steps", "guidance_scale", "prompt", "negative_prompt", "width",
                "height", "batch_size", "timings", "unet_evaluations"):
        assert key in first.settings


def test_the_result_reports_its_measurements_as_typed_fields_the_settings_agree_with(tiny_engine):
    result = list(tiny_engine.generate(GenerateSpec("a small blue square on the right", seed=None, **FAST)))[-1]
    assert isinstance(result, GenerationResult)
    assert result.seed == result.settings["seed"] and result.steps == result.settings["steps"]
    assert result.nfe_per_step == result.settings["nfe_per_step"] == 2  # uncond and prompt, one batched call
    assert result.sampling_seconds_per_step > 0 and result.classifier_gradient_evaluations is None
    assert result.unet_evaluations == result.steps and result.settings["unet_evaluations"] == result.unet_evaluations


def test_a_drawn_seed_leaves_room_for_the_seeds_after_it():
    """SDEdit's repeat k runs with seed + k: a random seed for K repeats keeps seed + K - 1 within the range."""
    assert resolve_seed(7, span=8) == 7
    assert all(0 <= resolve_seed(None, span=8) <= SEED.high - 7 for _ in range(200))


def test_cancel_mid_run_raises_and_the_next_job_works(tiny_engine):
    cancel = CancelToken()
    events = tiny_engine.generate(GenerateSpec("a red circle", seed=1, steps=6, capture_attention=True), cancel=cancel)
    processors_before = dict(tiny_engine.model.unet.attn_processors)
    with pytest.raises(CancelledError):
        for event in events:
            if isinstance(event, Progress) and event.step == 2:
                cancel.cancel()
    assert tiny_engine.model.unet.attn_processors == processors_before  # capture processors removed
    result = list(tiny_engine.generate(GenerateSpec("a red circle", seed=1, **FAST)))[-1]
    assert isinstance(result, Result)


def test_abandoning_a_job_releases_the_engine(tiny_engine):
    events = tiny_engine.generate(GenerateSpec("a red circle", seed=1, **FAST))
    next(events)  # holds the lock now
    events.close()  # what Gradio does when the user presses Stop
    assert isinstance(list(tiny_engine.generate(GenerateSpec("a red circle", seed=1, **FAST)))[-1], Result)


def test_concurrent_jobs_run_one_at_a_time_in_arrival_order(tiny_engine):
    log: list[str] = []

    def run(name: str, events) -> None:
        for event in events:
            if isinstance(event, Progress) and event.step == 1:
                log.append(f"{name} start")
        log.append(f"{name} end")

    first = tiny_engine.generate(GenerateSpec("a red circle", seed=1, **FAST))
    next(first)  # job A holds the engine
    log.append("A start")
    threads = []
    for name in ("B", "C"):
        thread = threading.Thread(target=run, args=(name, tiny_engine.generate(GenerateSpec("a red circle", seed=2, **FAST))))
        waiting = tiny_engine.jobs_waiting
        thread.start()
        _wait_for(lambda: tiny_engine.jobs_waiting == waiting + 1)
        threads.append(thread)
    run("A", first)
    for thread in threads:
        thread.join(timeout=60)
    assert log == ["A start", "A end", "B start", "B end", "C start", "C end"]


def test_a_job_cancelled_while_waiting_gives_up_its_place():
    lock, order = FairLock(), []
    cancelled = CancelToken()
    cancelled.cancel()

    def wait_turn(name: str, cancel: CancelToken | None) -> None:
        try:
            with lock.hold(cancel):
                order.append(name)
        except CancelledError:
            order.append(f"{name} cancelled")

    with lock.hold():
        quitter = threading.Thread(target=wait_turn, args=("quitter", cancelled))
        quitter.start()
        quitter.join(timeout=5)
        patient = threading.Thread(target=wait_turn, args=("patient", None))
        patient.start()
        _wait_for(lambda: lock.waiting == 1)
    patient.join(timeout=5)
    assert order == ["quitter cancelled", "patient"]


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_device_out_of_memory_is_a_clear_error_and_the_next_job_runs(tiny_engine, monkeypatch):
    unet = tiny_engine.model.unet
    real_forward = unet.forward

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(unet, "forward", exhausted)
    with pytest.raises(DeviceOutOfMemoryError, match="ran out of memory at 128x128 with batch size 2: lower the size"):
        list(tiny_engine.generate(GenerateSpec("a red circle", seed=1, batch_size=2, **FAST)))
    monkeypatch.setattr(unet, "forward", real_forward)
    assert isinstance(list(tiny_engine.generate(GenerateSpec("a red circle", seed=1, **FAST)))[-1], Result)
