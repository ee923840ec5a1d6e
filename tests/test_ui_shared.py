"""What every tab shares, without a browser: Stop's word (studio/ui/stream.py), the session history, and the
pieces every result offers (studio/ui/parts.py).

Protects: Stop says where the run stopped in the same words its progress used and offers the partial result;
nothing of a stopped run is shown after Stop; a result view is labelled as the previous run's until the new run
writes it; every result lands in the session's history, bounded, and a closed session's goes; a word's
attention map becomes a mask where the word is; the difference view shows a change; downloads carry settings.
"""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from studio import png_settings
from studio.errors import CancelledError
from studio.events import CancelToken, GenerationResult, Preview, Progress
from studio.ui import history, parts, stream


class FakeRequest:
    def __init__(self, session: str) -> None:
        self.session_hash = session


STATUS, GALLERY = gr.HTML(render=False), gr.Gallery(render=False)


def result(prompt: str = "a red circle", images: int = 1) -> GenerationResult:
    pictures = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(images)]
    return GenerationResult(pictures, {"job": "generate", "prompt": prompt, "seed": 3, "seeds": [3 + i for i in range(images)]},
                            seed=3, timings={"total": 0.1}, unet_evaluations=1, nfe_per_step=2)


def text_of(html: str) -> str:
    return html.split('class="dcs-text">')[1].split("</div>")[0]


def test_stopped_run_says_where_in_its_progress_words_and_offers_the_partial_result():
    token_seen = threading.Event()

    def start(cancel: CancelToken):
        def events():
            yield Progress(3, 10, "Edit: step 3 / 10")
            yield Preview(3, [Image.new("RGB", (4, 4))])
            token_seen.wait(5)
            cancel.cancel()  # what Stop does (from another thread)
            yield Progress(4, 10, "Edit: step 4 / 10")  # in flight when Stop was pressed: never shown
            raise CancelledError("Cancelled after 4 of 10 steps.")

        return events()

    shown = []
    render = lambda event: {GALLERY: ["preview"]} if isinstance(event, Preview) else None
    stream_outputs = stream.stream_job("t", FakeRequest("s1"), STATUS, start, render, "Test",
                                       results={GALLERY: "Results"}, partial=lambda: {GALLERY: ["partial image"]})
    for outputs in stream_outputs:
        shown.append(outputs)
        token_seen.set()

    assert shown[0][GALLERY] == gr.update(label="Results · previous run")  # the old gallery is marked stale at once
    assert shown[2][GALLERY] == gr.update(label="Results · live")  # then the preview, a plain value
    assert shown[3][GALLERY] == ["preview"]
    last = shown[-1]
    assert text_of(last[STATUS]) == "Stopped after edit: step 3 / 10 · the partial result is shown"
    assert 'data-state="stopped"' in last[STATUS]
    assert last[GALLERY] == gr.update(value=["partial image"], label="Results · partial: stopped")
    assert not any("step 4" in str(outputs.get(STATUS, "")) for outputs in shown)


def test_results_land_in_the_sessions_history_with_their_own_seeds_and_labels_reset():
    session = "history-test"
    start = lambda cancel: iter([result("a big blue square", images=2)])
    outputs = list(stream.stream_job("generate", FakeRequest(session), STATUS, start,
                                     lambda event: {GALLERY: ["done"]}, "Test", results={GALLERY: "Results"}))

    assert outputs[-2][GALLERY] == gr.update(label="Results")
    assert outputs[-1][GALLERY] == ["done"]  # the result's value is plain: what an API caller receives
    entries = history.HISTORY.entries(session)
    assert [entry.caption for entry in entries] == ["Generate · a big blue square · seed 3 · #0",
                                                    "Generate · a big blue square · seed 4 · #1"]
    assert entries[0].settings["prompt"] == "a big blue square"
    history.HISTORY.forget(session)
    assert history.HISTORY.entries(session) == []


def test_history_keeps_the_newest_entries_and_sessions():
    store = history.SessionHistory(max_entries=3, max_sessions=2)
    for index in range(5):
        store.add("a", "generate", result(f"prompt {index}"))
    assert [entry.settings["prompt"] for entry in store.entries("a")] == ["prompt 2", "prompt 3", "prompt 4"]
    store.add("b", "generate", result())
    store.add("c", "generate", result())
    assert store.entries("a") == [] and len(store.entries("c")) == 1


def test_a_words_attention_map_becomes_a_mask_where_the_word_is():
    attention = np.zeros((4, 4), np.float32)
    attention[:2, :2] = 1.0  # the word attends to the top-left quarter
    mask = parts.mask_from_map(attention, (16, 16))
    assert mask.shape == (16, 16)
    assert mask[:6, :6].all() and not mask[10:, :].any() and not mask[:, 10:].any()
    with pytest.raises(Exception, match="flat"):
        parts.mask_from_map(np.ones((4, 4)), (16, 16))


def test_difference_view_shows_where_an_edit_changed_the_image():
    before = np.zeros((8, 8, 3), np.uint8)
    after = before.copy()
    after[2:4, 2:4] = 10  # a faint change, as a re-weight makes
    view = np.asarray(parts.difference(before, after))
    assert view[2:4, 2:4].min() == 40 and view.sum() == 40 * 4 * 3


def test_downloads_and_shown_images_carry_their_settings(tmp_path):
    settings = {"job": "diffedit", "source_prompt": "a red circle", "target_prompt": "a blue circle", "seed": 5}
    (path,) = parts.DOWNLOADS.pngs([("edit.png", np.zeros((8, 8, 3), np.uint8), settings)])
    assert png_settings.read_png_settings(path)["target_prompt"] == "a blue circle"
    shown = parts.tagged(Image.new("RGB", (8, 8)), settings, picture="mask")
    shown.save(tmp_path / "shown.png", pnginfo=None)  # what Gradio does with format="png" keeps info's text
    assert png_settings.read_png_settings(shown)["picture"] == "mask"


def test_a_run_stopped_before_its_first_step_says_so():
    job = stream.Job(CancelToken())
    assert text_of(job.stopped()[stream.STATUS_KEY]) == "Stopped before the first step"


def test_download_folders_survive_another_process_pruning_the_same_folder(tmp_path, monkeypatch):
    """Every studio on a machine writes its downloads under one temporary folder and prunes the expired ones: a
    folder another process removed between the listing and its check must not fail this job (a soak beside a test
    run got 'Generation failed unexpectedly (FileNotFoundError)')."""
    downloads = parts.DownloadFolder(keep_s=0)
    downloads.root = tmp_path
    expired = tmp_path / "expired"
    expired.mkdir()
    (expired / "a.png").write_bytes(b"x")
    gone = tmp_path / "pruned-by-another-process"
    listing = type(tmp_path).iterdir
    monkeypatch.setattr(type(tmp_path), "iterdir", lambda self: iter([gone, *listing(self)]) if self == tmp_path
                        else listing(self))

    folder = downloads.folder()

    assert folder.is_dir() and not expired.exists()
