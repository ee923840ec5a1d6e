"""The studio as a Hugging Face Space runs it: its entry point, its login, its private events, ZeroGPU.

Protects: `python app.py` started with a Space's environment (SYSTEM=spaces, SPACE_ID, GRADIO_SERVER_NAME/PORT,
STUDIO_PUBLIC=1, SPACES_ZERO_GPU=1 with a stand-in `spaces` package, tests/fake_spaces) serves one job of every tab,
each run through spaces.GPU with its arguments and events pickled, and a Stop there stops the job (slow: the Space's
start); in the web process, a ZeroGPU job is checked before any GPU is asked for, asks a duration that grows with its
cost, brings a worker's error back as its message, and stops at Stop between steps; --auth / --auth-file / $STUDIO_AUTH reach Gradio's login (an endpoint and the file
routes refused without it, a job run with it); a warning when the studio is reachable beyond loopback without a
login; private events are not callable by name; analytics are off; README's front matter is the Space's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from app_harness import PROMPT, free_port
from gradio_client import Client
from gradio_client.utils import Status

import app
import space_jobs
from studio import limits
from studio.costs import JobCost
from studio.errors import CancelledError, DeviceOutOfMemoryError, StudioError
from studio.events import CancelToken, Progress
from studio.specs import GenerateSpec
from studio.ui import endpoints, gpu

ROOT = Path(__file__).resolve().parents[1]
FAKE_SPACES = Path(__file__).parent / "fake_spaces"


# 1. flags and environment ---------------------------------------------------------------------------------------------

def test_logins_come_from_the_flags_the_file_and_the_environment(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# the team\nbob:pw:with:colons\n\ncarol: spaced \n")
    assert app.credentials(["ann:secret"], users, "dave:x, erin:y") == [
        ("ann", "secret"), ("bob", "pw:with:colons"), ("carol", " spaced"), ("dave", "x"), ("erin", "y")]
    assert app.credentials([], None, "") == []


@pytest.mark.parametrize("flags, environment, place", [
    (["ann"], "", "--auth #1"), (["ann:"], "", "--auth #1"), ([":pw"], "", "--auth #1"),
    ([], "ann:ok,bob", "STUDIO_AUTH entry 2")])
def test_a_malformed_login_names_its_place_and_not_its_password(flags, environment, place):
    with pytest.raises(ValueError, match=place) as refused:
        app.credentials(flags, None, environment)
    assert "ok" not in str(refused.value).replace("not", "")


def test_an_unreadable_auth_file_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--auth-file", str(tmp_path / "missing.txt")])
    assert "cannot read it" in capsys.readouterr().err


@pytest.mark.parametrize("host, share, authenticated, warned", [
    ("127.0.0.1", False, False, False), ("localhost", False, False, False), ("::1", False, False, False),
    ("0.0.0.0", False, False, True), ("studio.example.org", False, False, True), ("127.0.0.1", True, False, True),
    ("0.0.0.0", True, True, False)])
def test_reaching_beyond_loopback_without_a_login_is_warned_about(host, share, authenticated, warned):
    warning = app.exposure_warning(host, share, authenticated)
    assert (warning is not None) == warned
    if warned:
        assert "--auth" in warning and (host in warning or "gradio.live" in warning)
        assert "--public" in warning and "--public" not in app.exposure_warning(host, share, authenticated, public=True)


def test_a_space_environment_sets_the_model_the_limits_and_gradios_address(monkeypatch):
    monkeypatch.setenv("STUDIO_MODEL", "runwayml/stable-diffusion-v1-5")
    monkeypatch.setenv("STUDIO_PUBLIC", "1")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    monkeypatch.setenv("STUDIO_AUTH", "ann:secret")
    args = app.parse_args([])
    assert (args.model, args.public, args.host, args.port) == ("runwayml/stable-diffusion-v1-5", True, "0.0.0.0", 7861)
    assert args.credentials == [("ann", "secret")]
    assert app.parse_args(["--model", "other", "--port", "1234"]).model == "other"  # a flag wins


def test_without_a_space_environment_the_studio_is_local(monkeypatch):
    for name in ("STUDIO_MODEL", "STUDIO_PUBLIC", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.model, args.public, args.host, args.port, args.credentials) == (None, False, "127.0.0.1", 7860, [])


def test_readme_front_matter_is_a_gradio_space_on_the_installed_gradio():
    import gradio

    front = (ROOT / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    fields = dict(line.split(": ", 1) for line in front.strip().splitlines())
    assert fields["sdk"] == "gradio" and fields["sdk_version"] == gradio.__version__
    assert fields["app_file"] == "app.py" and (ROOT / fields["app_file"]).is_file()
    assert {"title", "emoji", "colorFrom", "colorTo", "python_version", "suggested_hardware", "short_description",
            "pinned", "license"} <= set(fields)
    assert len(fields["short_description"]) <= 60  # the Hub refuses longer ones


def test_requirements_are_the_projects_dependencies_but_gradio_which_the_space_installs():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    expected = [d for d in project["dependencies"] if not d.startswith("gradio")] + project["optional-dependencies"]["space"]
    assert listed == expected


# 2. login and private events over HTTP --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged_app(tiny_engine, tmp_path_factory):
    """The app on the tiny model behind a login (ann / secret)."""
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    demo = app.build_app(tiny_engine, concepts_dir=tmp_path_factory.mktemp("concepts"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=app.credentials(["ann:secret"], None, ""), **app.launch_settings())
    try:
        yield demo, f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def test_without_the_login_endpoints_and_files_are_refused(logged_app):
    demo, url = logged_app
    with httpx.Client(base_url=url) as http:
        assert http.post("/gradio_api/call/generate", json={"data": [PROMPT]}).status_code == 401
        assert http.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"}).status_code == 401
        assert http.get(f"/gradio_api/file={ROOT / 'README.md'}").status_code == 401
        assert http.post("/gradio_api/upload", files={"files": ("a.png", b"x")}).status_code == 401
        assert http.get("/config").status_code == 401
        assert http.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400


def test_with_the_login_a_job_runs(logged_app):
    demo, url = logged_app
    with pytest.raises(ValueError):  # gradio_client cannot even read the API without it
        Client(url, verbose=False)
    client = Client(url, auth=("ann", "secret"), verbose=False)
    gallery, *_ = client.predict(api_name="/generate", prompt=PROMPT, steps=1, width=64, height=64)
    assert len(gallery) == 1
    assert demo.analytics_enabled is False


def test_private_events_are_not_callable_by_name(logged_app):
    demo, url = logged_app
    private = sorted(endpoints.private_names(demo))
    assert private and "generate" not in private
    with httpx.Client(base_url=url) as http:
        http.post("/login", data={"username": "ann", "password": "secret"}).raise_for_status()
        for route in ("call", "call/v2", "run"):
            refused = http.post(f"/gradio_api/{route}/{private[0]}", json={"data": []})
            assert refused.status_code == 404 and "No endpoint" in refused.text
        assert http.post("/gradio_api/call/generate", json={"data": [PROMPT]}).status_code == 200  # public ones are


def test_no_private_event_runs_on_the_model(logged_app):
    demo, _ = logged_app
    assert not [fn.api_name for fn in demo.fns.values() if fn.api_visibility == "private" and fn.concurrency_id == "model"]


# 3. ZeroGPU in the web process ----------------------------------------------------------------------------------------

@pytest.fixture
def zero_gpu(monkeypatch):
    """ZeroGPU on, with the stand-in `spaces` (tests/fake_spaces): its calls are recorded in spaces.calls."""
    monkeypatch.syspath_prepend(str(FAKE_SPACES))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    sys.modules.pop("spaces", None)
    assert gpu.prepare()
    import spaces

    spaces.calls.clear()
    yield spaces
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert not gpu.prepare()  # off again: engine_job is the engine call
    sys.modules.pop("spaces", None)


def test_the_duration_asked_grows_with_the_jobs_cost():
    standard, batch_of_four = JobCost(512, 512, 50, 1, 2).units, JobCost(1024, 1024, 50, 4, 2).units
    assert gpu.gpu_seconds(standard) == pytest.approx(gpu.START_SECONDS + gpu.SECONDS_PER_UNIT, abs=1)
    assert gpu.gpu_seconds(standard) < gpu.gpu_seconds(batch_of_four)
    # the costliest job public mode lets through fits in a default ZeroGPU call (spaces' 60 s)
    assert gpu.gpu_seconds(limits.PUBLIC.max_job_cost) <= 60


def test_without_zero_gpu_a_job_is_the_engine_call(engine, monkeypatch):
    assert not gpu.prepare()
    job = iter(())
    monkeypatch.setattr(engine, "generate", lambda spec, cancel=None: job)
    assert gpu.engine_job(engine, "generate", GenerateSpec(PROMPT)) is job


def test_on_zero_gpu_a_job_is_checked_here_and_its_events_come_back_pickled(engine, zero_gpu):
    with pytest.raises(StudioError, match="Steps"):  # the input check runs in the web process, before any GPU
        gpu.engine_job(engine, "generate", GenerateSpec(PROMPT, steps=0))
    assert zero_gpu.calls == []
    events = list(gpu.engine_job(engine, "generate", GenerateSpec(PROMPT, steps=2, width=64, height=64, seed=1)))
    assert events[-1].images[0].size == (64, 64) and events[-1].settings["seed"] == 1
    assert [call["entry"] for call in zero_gpu.calls] == ["generate"]


def test_on_zero_gpu_a_costlier_job_asks_for_more_gpu_time(engine, zero_gpu):
    for steps in (2, 20):
        list(gpu.engine_job(engine, "generate", GenerateSpec(PROMPT, steps=steps, width=64, height=64, seed=1)))
    small, large = zero_gpu.calls
    assert small["units"] is not None and large["units"] == pytest.approx(10 * small["units"])
    assert [small["duration"], large["duration"]] == [gpu.gpu_seconds(small["units"]), gpu.gpu_seconds(large["units"])]


def test_a_worker_error_comes_back_as_the_engines_message(engine, zero_gpu, monkeypatch):
    def running_out_of_memory(spec, cancel=None):
        raise DeviceOutOfMemoryError("The cuda device ran out of memory at 512x512: lower the size.")
        yield  # a generator, as the engine's jobs are: it fails once the worker runs it

    monkeypatch.setattr(engine, "generate", running_out_of_memory)
    with pytest.raises(StudioError, match="ran out of memory at 512x512"):
        list(gpu.engine_job(engine, "generate", GenerateSpec(PROMPT)))


def test_stop_on_zero_gpu_stops_the_stream_and_frees_the_model(engine, zero_gpu):
    cancel = CancelToken()
    events = gpu.engine_job(engine, "generate", GenerateSpec(PROMPT, steps=40, width=64, height=64, seed=1),
                            cancel=cancel)
    seen = 0
    with pytest.raises(CancelledError):
        for event in events:
            seen += isinstance(event, Progress)
            if seen == 2:
                cancel.cancel()
    assert seen == 2  # not one more step came through after Stop
    started = time.monotonic()
    assert list(gpu.engine_job(engine, "generate", GenerateSpec(PROMPT, steps=1, width=64, height=64, seed=2)))
    assert time.monotonic() - started < 30  # the worker's job let the model go


def test_an_inversion_crosses_to_the_worker_for_an_edit(engine, zero_gpu):
    from PIL import Image

    from studio.editing.p2p import P2PSpec
    from studio.inversion import InversionSpec

    picture = Image.new("RGB", (engine.native_size,) * 2, (200, 30, 30))
    spec = InversionSpec(prompt=space_jobs.SOURCE, steps=2)
    inversion = list(gpu.engine_job(engine, "invert", spec, picture))[-1].inversion
    edit = P2PSpec(source_prompt="", target_prompt=space_jobs.TARGET, edit="word swap", steps=2)
    assert list(gpu.engine_job(engine, "p2p", edit, inversion))[-1].images
    assert [call["entry"] for call in zero_gpu.calls] == ["invert", "p2p"]


# 4. the Space's entry point -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """`python app.py` as a ZeroGPU Space starts it (Gradio's address on loopback for the test), and the log of its
    spaces.GPU calls."""
    folder = tmp_path_factory.mktemp("space")
    port, log = free_port(), folder / "gpu-calls.jsonl"
    env = {**os.environ, "SYSTEM": "spaces", "SPACE_ID": "studio/diffusion-control-studio", "SPACE_HOST": "localhost",
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "STUDIO_PUBLIC": "1",
           "SPACES_ZERO_GPU": "true", "FAKE_SPACES_LOG": str(log), "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "PYTHONPATH": os.pathsep.join([str(FAKE_SPACES), os.environ.get("PYTHONPATH", "")]),
           "STUDIO_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    output, url = folder / "app.log", f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--device", "cpu", "--concepts-dir", str(folder / "concepts")]
    process = None
    try:
        for attempt in range(2):
            with open(output, "w") as sink:
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
            if started(process, url, output) or attempt:
                break
            # Gradio's launch gives up when its own first request to the page takes over 3 s (networking.url_ok),
            # which a loaded shared CPU can make happen: once more, then the failure is real
            assert "localhost is not accessible" in output.read_text(), f"the Space exited: {output.read_text()[-3000:]}"
        assert process.poll() is None, f"the Space exited: {output.read_text()[-3000:]}"
        yield url, log, output, folder
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)


def started(process: subprocess.Popen, url: str, output: Path) -> bool:
    """Whether the app answers at `url` (False: it exited first); fails after three minutes."""
    deadline = time.monotonic() + 180
    while process.poll() is None:
        assert time.monotonic() < deadline, f"the Space did not start: {output.read_text()[-3000:]}"
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def gpu_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.slow  # about 1.5 minutes on 2 shared cores: the Space's start, then seven jobs (.ci/run runs it)
def test_the_space_serves_one_job_of_every_tab_through_zero_gpu(space):
    url, log, output, folder = space
    client = Client(url, verbose=False)
    image = space_jobs.picture(folder)
    for tab in space_jobs.TABS:
        assert space_jobs.run_tab(client, tab, image), tab
    entries = [call["entry"] for call in gpu_calls(log)]
    assert {"generate", "invert", "sdedit", "diffedit", "p2p", "personalize"} <= set(entries)
    assert "model" in output.read_text() and "ZeroGPU" in output.read_text()
    assert "without a login" not in output.read_text()  # loopback here


@pytest.mark.slow
def test_stop_on_the_space_stops_the_job_and_the_next_one_runs(space):
    url, *_ = space
    client = Client(url, verbose=False)
    job = client.submit(api_name="/generate", prompt=PROMPT, steps=150, width=64, height=64, seed=1)
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 3 and not job.done():
        assert time.monotonic() < deadline, "the job produced no progress"
        time.sleep(0.05)
    job.cancel()
    started = time.monotonic()
    gallery, *_ = Client(url, verbose=False).predict(api_name="/generate", prompt=PROMPT, steps=1, width=64, height=64)
    assert len(gallery) == 1 and time.monotonic() - started < 60
    assert job.status().code == Status.CANCELLED
