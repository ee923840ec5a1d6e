"""What every tab shares to run engine jobs: the progress bar, one registry of running jobs (so Stop reaches the
engine), the one start/stream/stop loop (`stream_job`) and the one Stop (`stop_button`)."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from studio.errors import CancelledError, StudioError
from studio.events import CancelToken, Progress

if TYPE_CHECKING:
    from gradio.components import Component

log = logging.getLogger(__name__)
Outputs = dict  # {component: value}: Gradio leaves every output not named unchanged


def progress_html(step: int, total: int, text: str, state: str = "running") -> str:
    percent = 100 if total <= 0 else round(100 * step / total)
    return (
        f'<div class="dcs-progress {state}" data-state="{state}">'
        f'<div class="dcs-bar"><div class="dcs-fill" style="width:{percent}%"></div></div>'
        f'<div class="dcs-text">{html.escape(text)}</div></div>'
    )


@dataclass
class Job:
    """A running job as Stop sees it: its cancel token and the last step it reported."""

    cancel: CancelToken
    step: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)


class SessionJobs:
    """The running job of each (browser session, tab), so Stop reaches the engine directly and can say where it
    stopped. One registry serves every tab; a tab's two actions (DiffEdit's mask and edit) share its key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Job] = {}

    def start(self, key: tuple[str, str]) -> Job:
        job = Job(CancelToken())
        with self._lock:
            self._jobs[key] = job
        return job

    def finish(self, key: tuple[str, str], job: Job) -> None:
        with self._lock:
            if self._jobs.get(key) is job:
                del self._jobs[key]

    def cancel(self, key: tuple[str, str]) -> Job | None:
        with self._lock:
            job = self._jobs.get(key)
        if job is not None:
            job.cancel.cancel()
        return job


JOBS = SessionJobs()


def session_id(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "api"


def stream_job(tab: str, request: gr.Request | None, status: Component, start: Callable[[CancelToken], Iterator[Any]],
               render: Callable[[Any], Outputs | None], what: str) -> Iterator[Outputs]:
    """Run one engine job for a tab's handler and stream it to the tab's outputs.

    `start(cancel)` checks the form and returns the engine's events: a StudioError there (bad input) becomes
    gr.Error before any model work. Progress events update `status`; `render(event)` turns any other event into
    outputs ({component: value}; None: nothing to show). A StudioError while running shows as a failed status and
    a gr.Error; CancelledError (Stop) as a stopped status; any other exception is a bug: logged, shown as a
    generic message, and the app stays up. The engine's generator is closed in every case, so its lock and
    attention processors unwind before the next job (Stop raises GeneratorExit at this generator's yield)."""
    key = (session_id(request), tab)
    job = JOBS.start(key)
    try:
        events = start(job.cancel)
    except StudioError as error:
        JOBS.finish(key, job)
        raise gr.Error(str(error)) from error
    except Exception as error:
        JOBS.finish(key, job)
        raise gr.Error(_unexpected(what, error)) from error
    try:
        yield {status: progress_html(0, 1, "Starting…")}
        for event in events:
            if isinstance(event, Progress):
                job.step, job.total = event.step, event.total  # for Stop's message
                text = event.message or f"Step {event.step} / {event.total} · {time.monotonic() - job.started:.1f} s"
                yield {status: progress_html(event.step, event.total, text)}
            elif (outputs := render(event)) is not None:
                yield outputs
    except CancelledError as error:
        yield {status: progress_html(job.step, job.total, f"Stopped: {error}", "stopped")}
    except StudioError as error:
        yield {status: progress_html(job.step, job.total, str(error), "failed")}
        raise gr.Error(str(error)) from error
    except Exception as error:
        message = _unexpected(what, error)
        yield {status: progress_html(job.step, job.total, message, "failed")}
        raise gr.Error(message) from error
    finally:
        job.cancel.cancel()
        if hasattr(events, "close"):
            events.close()  # unwinds the engine job (its lock, its attention processors) when stopped mid-run
        JOBS.finish(key, job)


def _unexpected(what: str, error: Exception) -> str:
    """A bug, not bad input: the details go to the log, the user gets a message and the app stays up."""
    log.exception("%s failed", what)
    return f"{what} failed unexpectedly ({type(error).__name__}); see the server log."


def done_html(text: str) -> str:
    """The status of a finished job."""
    return progress_html(1, 1, text, "done")


def status_box(elem_id: str) -> gr.HTML:
    """A tab's status line (the progress bar and what the job says), idle until a job starts."""
    return gr.HTML(progress_html(0, 0, "Ready.", "idle"), label="Progress", elem_id=elem_id)  # label: the API docs'


def run_and_stop(label: str, elem_id: str, stop_id: str) -> tuple[gr.Button, gr.Button]:
    """A tab's Run button with its Stop beside it."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=elem_id, scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=stop_id, scale=1)
    return run, stop


# Every job event queues on the one model (one job at a time); the status line shows its progress.
JOB_EVENT = dict(concurrency_id="model", show_progress="hidden")


def stop_button(button: gr.Button, status: Component, runs: list[Any], tab: str, api_name: str) -> None:
    """Wire a tab's Stop: cancel its running events (GeneratorExit at the handler's next yield) and set the engine's
    token so it stops between steps even while nothing is being yielded; say where it stopped. Runs beside the
    job, not queued behind it."""

    def stop(request: gr.Request) -> Any:
        job = JOBS.cancel((session_id(request), tab))
        if job is None:
            return gr.skip()
        return progress_html(job.step, job.total, f"Stopped after step {job.step} of {job.total}.", "stopped")

    button.click(stop, None, status, cancels=runs, api_name=api_name, api_visibility="undocumented",
                 concurrency_limit=None, concurrency_id="stop", show_progress="hidden")
