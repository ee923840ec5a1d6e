"""Protects the limits of a public studio (studio.costs, studio.limits, studio.ui.stream, studio.ui.uploads): every
job's cost is known before it queues and refused over the cap, one job per session, a job nobody reads is stopped,
side handlers are bounded, uploads cannot fill the disk."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError

from studio import limits
from studio.costs import JobCost, structure_passes
from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import P2PSpec
from studio.editing.sdedit import SDEditSpec
from studio.errors import JobTooCostlyError
from studio.inversion import InversionSpec
from studio.inversion.result import METHOD_LABELS
from studio.personalize.spec import METHODS, PersonalizeSpec
from studio.specs import Condition, GenerateSpec
from studio.structure.spec import ControlSpec, StructureSpec
from studio.ui.stream import BUSY_MESSAGE, Admission, ReaderWatch
from tests.app_harness import PROMPT, free_port

IMAGE = np.full((128, 128, 3), 200, dtype=np.uint8)


def jobs(engine, tmp_path: Path, **overrides):
    """Every job kind's entry point with its spec's defaults (and `overrides` where the spec has them)."""
    pick = lambda spec: {k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(spec)}}
    yield "generate", lambda: engine.generate(GenerateSpec(PROMPT, **pick(GenerateSpec)))
    yield "sdedit", lambda: engine.sdedit(SDEditSpec(PROMPT, **pick(SDEditSpec)), IMAGE)
    yield "diffedit mask", lambda: engine.diffedit_mask(DiffEditSpec(PROMPT, "a big blue circle on the left",
                                                                      **pick(DiffEditSpec)), IMAGE)
    yield "diffedit", lambda: engine.diffedit(DiffEditSpec(PROMPT, "a big blue circle on the left",
                                                           **pick(DiffEditSpec)), IMAGE)
    yield "p2p", lambda: engine.p2p(P2PSpec(PROMPT, "a big blue circle on the left", **pick(P2PSpec)))
    for method in METHOD_LABELS:
        yield f"invert {method}", lambda method=method: engine.invert(
            InversionSpec(PROMPT, method=method, **pick(InversionSpec)), IMAGE)
    for method in METHODS:
        spec = PersonalizeSpec.recipe(method, **pick(PersonalizeSpec))
        second = [IMAGE] * 3 if spec.second_concept is not None else []  # Custom Diffusion's recipe has two concepts
        yield f"personalize {method}", lambda spec=spec, second=second: engine.personalize(
            spec, [IMAGE] * 3, tmp_path / spec.method, second_images=second)


@pytest.fixture
def capped(engine):
    engine.max_job_cost = limits.PUBLIC.max_job_cost
    yield engine
    engine.max_job_cost = None


def test_a_standard_image_is_one_unit_and_passes_count_what_each_step_evaluates():
    assert JobCost(512, 512, 50, 1, 2).units == 1.0
    assert JobCost(512, 512, 50, 4, 2).describe() == "512x512, 50 steps, batch 4, 2 UNet passes a step"
    from studio.generation import generation_cost
    assert generation_cost(GenerateSpec(PROMPT), 128, 128).passes == 2  # CFG
    assert generation_cost(GenerateSpec(PROMPT, guidance_scale=1.0), 128, 128).passes == 1  # no unconditional branch
    two = (Condition("a circle"), Condition("a square"))
    assert generation_cost(GenerateSpec(PROMPT, conditions=two), 128, 128).passes == 4  # negative, prompt and two
    channel = StructureSpec(controls=(ControlSpec("layout", mode="channel"),))
    assert structure_passes(channel) == 1 and structure_passes(channel, has_unconditional=False) == 2
    from studio.inversion.methods import inversion_cost
    assert inversion_cost(InversionSpec(PROMPT, method="edict"), 128).passes == 8  # two sequences, CFG, both ways
    nti = inversion_cost(InversionSpec(PROMPT, method="null_text"), 128).passes
    assert nti == 1 + 1 + 2 * InversionSpec().inner_steps + 2


def test_every_jobs_defaults_on_the_embedded_model_pass_the_public_cap(capped, tmp_path):
    for name, start in jobs(capped, tmp_path):
        start().close()  # admitted: the job is never started


def test_every_job_over_the_cap_is_refused_before_it_queues_naming_its_cost(capped, tmp_path):
    capped.max_job_cost = 0.001
    for name, start in jobs(capped, tmp_path):
        with pytest.raises(JobTooCostlyError, match=r"would cost [\d.]+ standard images \(\d+x\d+, \d+ steps, batch "
                                                    r"\d+, [\d.]+ UNet passes a step\), over this studio's limit of "
                                                    r"0.001 .*: lower the steps, the size or the batch\."):
            start()
        assert capped.jobs_waiting == 0, name


@pytest.mark.parametrize("size", [{"width": 2048, "height": 2048}, {"width": 1024, "height": 1024, "batch_size": 8}])
def test_the_public_cap_refuses_the_requests_that_held_the_model_for_minutes(capped, size):
    with pytest.raises(JobTooCostlyError, match="over this studio's limit of 4"):
        capped.generate(GenerateSpec(PROMPT, **size))


def test_a_training_runs_samples_count_in_its_cost():
    from studio.personalize.job import training_cost

    lora = PersonalizeSpec.recipe("lora", concept="star", class_word="shape")
    previews_each_step = dataclasses.replace(lora, sample_every=1)
    assert training_cost(previews_each_step, 128).units > 4 * training_cost(lora, 128).units > 0
    assert training_cost(previews_each_step, 128).units > limits.PUBLIC.max_job_cost  # refused in public mode
    dreambooth = PersonalizeSpec.recipe("dreambooth", concept="star", class_word="shape", prior_preservation=True)
    many_class_images = dataclasses.replace(dreambooth, class_images=200)
    assert training_cost(many_class_images, 128).units > training_cost(dreambooth, 128).units + 1


def test_admission_keeps_one_place_per_session_and_gives_it_back():
    admission = Admission()
    admission.per_session = 1
    assert admission.admit("a", "generate") and not admission.admit("a", "sdedit")
    assert admission.admit("b", "generate") and admission.admit(None, "generate")  # no session: not limited here
    admission.started("a", "generate")
    assert not admission.admit("a", "generate")
    admission.finished("a", "generate")
    assert admission.admit("a", "sdedit")
    admission.dropped("a", "sdedit")  # Stop while it waited
    assert admission.admit("a", "p2p")
    admission.forget(type("Request", (), {"session_hash": "a"})())  # the browser tab closed while it waited
    assert admission.admit("a", "p2p")


class Unread:
    """A session's undelivered messages as ReaderWatch sees them: `size` of them."""

    def __init__(self, size: int = 0) -> None:
        self.size = size

    def qsize(self) -> int:
        return self.size


def test_a_reader_that_lags_behind_is_alive_and_one_that_reads_nothing_is_gone():
    watch = ReaderWatch(None, timeout_s=0.2)
    watch.messages = Unread(2)  # queued before the job ran
    watch.last = 2
    for _ in range(6):  # each look: two messages sent, two taken, one always left behind
        watch.sent({}), watch.sent({})
        time.sleep(0.05)
        assert not watch.gone()
    for _ in range(6):  # nobody takes any more
        watch.sent({})
        watch.messages.size += 1
        time.sleep(0.05)
    assert watch.gone()


def launch(engine, tmp_path: Path, preset: limits.Limits):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path)
    import app

    demo = app.build_app(engine, concepts_dir=tmp_path / "concepts", limits=preset)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_settings(preset))
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def public_app(engine, tmp_path_factory):
    demo, url = launch(engine, tmp_path_factory.mktemp("public"), limits.PUBLIC)
    yield demo, url
    demo.close()
    engine.max_job_cost = None


def timed_generate(client: Client, steps: int, timings: dict, key: str) -> None:
    started = time.monotonic()
    client.predict(api_name="/generate", prompt=PROMPT, steps=steps, random_seed=True)
    timings[key] = time.monotonic() - started


def test_a_sessions_burst_is_refused_and_does_not_delay_another_session(public_app):
    _, url = public_app
    burster, other = Client(url, verbose=False), Client(url, verbose=False)
    timings: dict[str, float] = {}
    timed_generate(other, 5, timings, "alone")  # warm, and one short job's time
    first = burster.submit(api_name="/generate", prompt=PROMPT, steps=15, random_seed=True)
    deadline = time.monotonic() + 60
    while not first.outputs():  # started
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(2):
        with pytest.raises(ValidationError, match=BUSY_MESSAGE):
            burster.predict(api_name="/generate", prompt=PROMPT, steps=15, random_seed=True)
    thread = threading.Thread(target=timed_generate, args=(other, 5, timings, "beside"))
    started = time.monotonic()
    thread.start()
    first.result()
    burst_job = time.monotonic() - started
    thread.join(60)
    assert timings["beside"] <= burst_job + timings["alone"] + 2.0  # behind at most the one job of the burst
    timed_generate(burster, 5, timings, "again")  # the place came back when the job ended


def test_a_waiting_job_cancelled_by_its_client_gives_the_sessions_place_back(public_app):
    _, url = public_app
    runner, waiter = Client(url, verbose=False), Client(url, verbose=False)
    running = runner.submit(api_name="/generate", prompt=PROMPT, steps=40, random_seed=True)
    deadline = time.monotonic() + 60
    while not running.outputs():  # started: the waiter's job queues behind it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = waiter.submit(api_name="/generate", prompt=PROMPT, steps=5, random_seed=True)
    time.sleep(1.0)
    waiting.cancel()  # Gradio's /cancel drops it without running its handler or Stop
    running.result()
    assert waiter.predict(api_name="/generate", prompt=PROMPT, steps=2, random_seed=True) is not None


def test_admission_reads_no_input_so_an_unreadable_upload_still_gets_its_message(public_app, tmp_path):
    _, url = public_app
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="^Reference image: "):
        client.predict(api_name="/generate", prompt=PROMPT, image_prompt_on=True,
                       image_prompt_reference=handle_file(corrupt))
    # the refused job gave its place back: the session's next job runs (it was refused as "already running")
    assert client.predict(api_name="/generate", prompt=PROMPT, steps=2, random_seed=True) is not None


def test_a_call_whose_stream_is_never_read_is_stopped_and_frees_the_model(public_app):
    _, url = public_app
    client = Client(url, verbose=False)
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    values = {p["parameter_name"]: p.get("parameter_default") for p in parameters}
    values.update(prompt=PROMPT, steps=150, batch_size=2, random_seed=True)  # about 35 s of the model alone
    posted = httpx.post(f"{url}gradio_api/call/generate", json={"data": list(values.values())}, timeout=30)
    assert posted.status_code == 200, posted.text  # fire and forget: its GET is never sent
    time.sleep(1.0)  # it holds the model
    timings: dict[str, float] = {}
    timed_generate(client, 5, timings, "next")
    assert timings["next"] < limits.PUBLIC.reader_timeout_s + 6.0


def test_public_limits_bound_side_handlers_and_uploads(public_app, tmp_path):
    demo, url = public_app
    side = [fn for fn in demo.fns.values() if fn.concurrency_id not in ("model", "stop")]
    bounded = lambda limit: limit == "default" or (limit is not None and limit <= limits.PUBLIC.side_concurrency)
    assert side and all(bounded(fn.concurrency_limit) for fn in side)
    assert all(fn.concurrency_limit is None for fn in demo.fns.values() if fn.concurrency_id == "stop")
    assert demo.delete_cache == (limits.PUBLIC.upload_retention_s,) * 2
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (limits.PUBLIC.max_upload_mb * 2**20 + 1))
    with big.open("rb") as file:
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": file}, timeout=30)
    assert refused.status_code == 413


def test_uploads_are_refused_while_the_cache_holds_more_than_its_cap(engine, tmp_path):
    demo, url = launch(engine, tmp_path, dataclasses.replace(limits.LOCAL, max_cache_mb=1))
    try:
        def upload(count: int) -> httpx.Response:  # each file its own bytes: Gradio keeps one copy of equal files
            files = [("files", (f"x{i}.bin", os.urandom(600 * 1024))) for i in range(count)]
            return httpx.post(f"{url}gradio_api/upload", files=files, timeout=30)

        many = upload(2)  # one request of 1.2 MB: what it carries counts, not only what the cache holds already
        assert many.status_code == 507 and "upload space (1 MB) is full" in many.json()["detail"]
        assert [upload(1).status_code for _ in range(2)] == [200, 507]
    finally:
        demo.close()


def test_local_limits_are_the_studio_as_it_was():
    assert limits.LOCAL == limits.Limits(max_job_cost=None, jobs_per_session=None, queue_size=16, max_upload_mb=20,
                                         upload_retention_s=3600, side_concurrency=None, max_cache_mb=None,
                                         reader_timeout_s=30.0)


def test_the_rest_routes_that_would_skip_the_queue_are_closed(public_app):
    """Gradio's /run routes call a handler outside the queue (past its concurrency limit and the admission);
    the app is queued with api_open=False, so they are refused and only the queue runs jobs."""
    _, url = public_app
    answer = httpx.post(f"{url}gradio_api/run/generate", json={"data": [PROMPT]}, timeout=30)
    assert answer.status_code != 200
