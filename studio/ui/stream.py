"""What every tab shares to run engine jobs: the progress bar, the running job per browser session
(so Stop reaches the engine), and the editing tabs' start/stream/stop loop."""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.errors import CancelledError, InvalidInputError, StudioError
from studio.events import CancelToken, Progress

log = logging.getLogger(__name__)


def progress_html(step: int, total: int, text: str, state: str = "running") -> str:
    percent = 100 if total <= 0 else round(100 * step / total)
    return (
        f'<div class="dcs-progress {state}" data-state="{state}">'
        f'<div class="dcs-bar"><div class="dcs-fill" style="width:{percent}%"></div></div>'
        f'<div class="dcs-text">{html.escape(text)}</div></div>'
    )


@dataclass
class Job:
    cancel: CancelToken
    step: int = 0
    total: int = 0


class SessionJobs:
    """The running job per browser session, so Stop reaches the engine directly and can say where it stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def start(self, session: str, total: int) -> Job:
        job = Job(CancelToken(), 0, total)
        with self._lock:
            self._jobs[session] = job
        return job

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]

    def cancel(self, session: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(session)
        if job is not None:
            job.cancel.cancel()
        return job


def session_id(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "api"


class EditJobs(SessionJobs):
    """The running job per browser session of an editing tab: start it (bad input becomes gr.Error before any
    model work), stream it to the handler's outputs, stop it."""

    def run(self, request: gr.Request | None, start: Callable[[CancelToken], Iterator], width: int,
            render: Callable[[Any, int], tuple | None], what: str) -> Iterator[tuple]:
        """`start(cancel)` checks the form and returns the engine's events; the handler has `width` outputs, the
        first the status HTML. Progress events update the status; `render(event, total)` turns any other event
        into outputs (None: nothing to show). Stop and errors end the job cleanly; StudioError becomes gr.Error."""
        session = session_id(request)
        job = self.start(session, 0)
        try:
            events = start(job.cancel)
        except (InvalidInputError, TypeError, ValueError) as error:
            self.finish(session, job)
            raise gr.Error(str(error)) from error
        skip = gr.skip()
        rest = (skip,) * (width - 1)
        step = total = 0
        try:
            yield (progress_html(0, 1, "Starting…"), *rest)
            for event in events:
                if isinstance(event, Progress):
                    step, total = event.step, event.total
                    job.step, job.total = step, total  # for Stop's message
                    yield (progress_html(step, total, event.message or f"Step {step} / {total}"), *rest)
                elif (outputs := render(event, total)) is not None:
                    yield outputs
        except CancelledError as error:
            yield (progress_html(step, total, f"Stopped: {error}", "stopped"), *rest)
        except StudioError as error:
            yield (progress_html(step, total, str(error), "failed"), *rest)
            raise gr.Error(str(error)) from error
        except Exception as error:  # a bug, not bad input: keep the app alive, details in the log
            log.exception("%s failed", what)
            message = f"{what} failed unexpectedly ({type(error).__name__}); see the server log."
            yield (progress_html(step, total, message, "failed"), *rest)
            raise gr.Error(message) from error
        finally:
            job.cancel.cancel()
            if hasattr(events, "close"):
                events.close()  # unwinds the engine job (its lock) when stopped mid-run
            self.finish(session, job)

    def stop(self, request: gr.Request) -> Any:
        """The Stop button: cancels this session's job; says where it stopped."""
        job = self.cancel(session_id(request))
        if job is None:
            return gr.skip()
        return progress_html(job.step, job.total, f"Stopped after step {job.step} of {job.total}.", "stopped")
