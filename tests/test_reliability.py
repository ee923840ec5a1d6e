"""Protects (issue #19, "Measured"): every endpoint of the launched app -- private events included, which Gradio's queue
runs for anyone who names their fn_index -- answers every class of bad input (tests/reliability_probes.py: wrong types,
NaN/inf, huge and empty strings, unicode, huge / tiny / corrupt / truncated / bomb / odd-mode images, wrong-size masks,
server paths as files, hostile PNG settings chunks, pickles) with a message a user can read: never Gradio's empty
{"error": null}, never a hang, never a server path, never code run from a user's pickle; NaN/inf never reach a model
job; and a tiny generate still works after each endpoint's probes. The 12000x12000 PNG and a decompression bomb are
refused with the server's memory growing under 100 MB.

The default run sends one probe of each class to each endpoint (the argument and variant in turn); the slow run sends
every probe. bench/reliability.py runs these and the load, fault and soak measurements against a subprocess server.
"""

from __future__ import annotations

import psutil
import pytest
import reliability_probes as probes
from app_harness import launched_app

PROBE_TIMEOUT_S = 60.0  # a probe unanswered by then is a hang: a valid call of these sizes takes about a second
MEMORY_GROWTH_LIMIT_MB = 100


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    """The app on the embedded model (tests/conftest.py), its endpoints, the probe files and a wire to it."""
    with launched_app(engine, tmp_path_factory.mktemp("gradio")) as url:
        wire = probes.Wire(url, timeout=PROBE_TIMEOUT_S)
        try:
            yield probes.discover(url), probes.Files(tmp_path_factory.mktemp("probes")), wire
        finally:
            wire.close()


def problems_of(tried: probes.Tried, model_job: bool) -> list[str]:
    """What is wrong with one probe's outcome (nothing: answered as it should be)."""
    outcome, where = tried.outcome, f"{tried.endpoint}({tried.param}) {tried.probe.probe_class}/{tried.probe.variant}"
    problems = []
    if outcome.kind in probes.FAILING:
        problems.append(f"{where}: {outcome.kind} {outcome.text[:120]!r}")
    if outcome.leaks_path:
        problems.append(f"{where}: the message shows a server path: {outcome.text[:160]!r}")
    if model_job and tried.probe.probe_class == "nan_inf" and outcome.kind == "success":
        problems.append(f"{where}: NaN/inf accepted by a model job")
    return problems


def probe_every_endpoint(app, pick) -> tuple[list[probes.Tried], list[str]]:
    """Send `pick(endpoint, index)`'s probes to every endpoint; after each public or undocumented endpoint's probes
    (and once after all the private ones) a tiny generate must still succeed."""
    endpoints, files, wire = app
    tried, problems = [], []
    for index, endpoint in enumerate(endpoints):
        for probe in pick(endpoint, index):
            result = probes.run_probe(probe, endpoint, files, wire, PROBE_TIMEOUT_S)
            tried.append(result)
            problems += problems_of(result, endpoint.model_job)
        if endpoint.visibility != "private" or index == len(endpoints) - 1:
            alive = probes.tiny_generate(endpoints, files, wire)
            if alive.kind != "success":
                problems.append(f"after {endpoint.api_name}'s probes a tiny generate gave {alive.kind}: {alive.text!r}")
    if files.marker.exists():
        problems.append("a pickle from a user was unpickled: its marker file exists")
    return tried, problems


def test_every_endpoint_answers_one_probe_of_every_class_with_a_message(app):
    endpoints = app[0]
    assert {"generate", "structure", "invert", "sdedit", "diffedit_mask", "diffedit", "p2p", "personalize",
            "read_settings", "load_inversion", "concepts_load"} <= {endpoint.api_name for endpoint in endpoints}
    assert any(endpoint.visibility == "private" for endpoint in endpoints)

    tried, problems = probe_every_endpoint(app, probes.sample)

    assert {item.probe.probe_class for item in tried} == set(probes.CLASSES)  # every class was sent somewhere
    for endpoint in endpoints:  # every endpoint got a probe of each class that fits its arguments
        classes = {item.probe.probe_class for item in tried if item.endpoint == endpoint.api_name}
        assert classes == {probe.probe_class for probe in probes.probes_for(endpoint)}, endpoint.api_name
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_every_endpoint_answers_every_probe_with_a_message(app):
    _, problems = probe_every_endpoint(app, lambda endpoint, index: probes.probes_for(endpoint))

    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", ["huge", "bomb"])
@pytest.mark.parametrize("api_name", ["sdedit", "invert"])
def test_a_huge_png_or_a_bomb_is_refused_before_it_costs_memory(app, key, api_name):
    endpoints, files, wire = app
    endpoint = probes.by_name(endpoints, api_name)
    image = next(i for i, param in enumerate(endpoint.params) if param.kind in ("image", "imageeditor", "file"))
    files.upload(wire, key)  # the upload itself is not what is measured
    server = psutil.Process()  # the app runs in this process
    before = server.memory_info().rss

    result = probes.run_probe(probes.Probe(key, key, image, f"file:{key}"), endpoint, files, wire, PROBE_TIMEOUT_S)

    growth_mb = (server.memory_info().rss - before) / 2**20
    assert result.outcome.kind == "message", result.outcome
    assert "12000x12000" in result.outcome.text or "40000x40000" in result.outcome.text
    assert growth_mb < MEMORY_GROWTH_LIMIT_MB
    assert probes.tiny_generate(endpoints, files, wire).kind == "success"
