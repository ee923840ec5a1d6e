"""What every tab shares to run engine jobs: the progress bar, one registry of running jobs (so Stop reaches the
engine), the one start/stream/stop loop (`stream_job`) and the one Stop (`stop_button`)."""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studio.errors import CancelledError, StudioError
from studio.events import CancelToken, Progress, Result
from studio.limits import LOCAL
from studio.ui.history import HISTORY
from studio.ui.inputs import StudioBlocks, public_message
from studio.ui.parts import session_id

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


STARTING = "Starting…"  # a job's status until its first progress


@dataclass
class Job:
    """A running job as Stop sees it: its cancel token, the last progress it showed, the tab's result components
    (name -> label) and `partial`, what the tab offers when the run is stopped ({component: value}), and whether
    its handler has returned (after which nothing of this run reaches the browser)."""

    cancel: CancelToken
    step: int = 0
    total: int = 0
    text: str = STARTING
    started: float = field(default_factory=time.monotonic)
    results: Mapping[Component, str] = field(default_factory=dict)
    partial: Callable[[], Outputs] | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def stopped(self) -> Outputs:
        """The outputs of a stopped run: the status says where it stopped, in the words its progress used, and the
        partial result is offered under labels that say so."""
        text = (f"Stopped after {self.text[:1].lower()}{self.text[1:]}" if self.text != STARTING
                else "Stopped before the first step")
        outputs = _labelled(self.partial() if self.partial is not None else {}, self.results, "partial: stopped")
        if outputs:
            text += " · the partial result is shown"
        return {**outputs, STATUS_KEY: progress_html(self.step, self.total, text, "stopped")}


class SessionJobs:
    """The running job of each (browser session, tab), so Stop reaches the engine directly and can say where it
    stopped. One registry serves every tab; a tab's two actions (DiffEdit's mask and edit) share its key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Job] = {}
        self.reader_timeout_s: float | None = LOCAL.reader_timeout_s  # a job unread this long is stopped (ReaderWatch)

    def start(self, key: tuple[str, str], results: Mapping[Component, str] | None = None,
              partial: Callable[[], Outputs] | None = None) -> Job:
        job = Job(CancelToken(), results=dict(results or {}), partial=partial)
        with self._lock:
            self._jobs[key] = job
        return job

    def finish(self, key: tuple[str, str], job: Job) -> None:
        job.finished.set()
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

BUSY_MESSAGE = "You already have a job running or waiting: wait for it or press Stop."


class Admission:
    """At most `per_session` model jobs running or waiting per session (None: any), enforced when a job is pushed,
    before it queues (AdmissionGuard). A job leaves when its handler returns, when Gradio does not queue it, when
    Stop drops it while it waits, and with its session (demo.unload). A caller without a session (a bare /call POST)
    is its own session each time: it is bounded by the queue's size and by the reader watch (`ReaderWatch`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.per_session: int | None = None
        self.tabs: dict[int, str] = {}  # fn_index of each model job event -> its tab (the key of its Stop)
        self._waiting: dict[str, list[str]] = {}  # session -> tabs of its admitted jobs not yet started
        self._running: dict[str, list[str]] = {}  # session -> tabs of its running jobs

    def admit(self, session: str | None, tab: str) -> bool:
        """Take a place for `session`'s job in `tab`; False (nothing taken) when the session has no place left."""
        if session is None or self.per_session is None:
            return True
        with self._lock:
            held = len(self._waiting.get(session, ())) + len(self._running.get(session, ()))
            if held >= self.per_session:
                return False
            self._waiting.setdefault(session, []).append(tab)
            return True

    def started(self, session: str, tab: str) -> None:
        with self._lock:
            if _take(self._waiting, session, tab):
                self._running.setdefault(session, []).append(tab)

    def finished(self, session: str, tab: str) -> None:
        with self._lock:
            _take(self._running, session, tab)

    def dropped(self, session: str, tab: str) -> None:
        """Stop in `tab` with nothing running there: Gradio drops the tab's waiting job (cancels=)."""
        with self._lock:
            while _take(self._waiting, session, tab):
                pass

    def not_queued(self, session: str, tab: str) -> None:
        """Gradio refused the admitted job (queue full, bad request): its place goes back."""
        with self._lock:
            _take(self._waiting, session, tab)

    def failed_before_start(self, block_fn: Any, session: str | None) -> None:
        """StudioBlocks: an admitted job failed before its handler ran (an input refused): its place goes back."""
        tab = self.tabs.get(getattr(block_fn, "_id", block_fn))
        if tab is not None and session is not None:
            self.not_queued(session, tab)

    def forget(self, request: gr.Request) -> None:
        """demo.unload: the session has gone, and its waiting jobs with it (Queue.clean_events)."""
        with self._lock:
            self._waiting.pop(request.session_hash, None)


def _take(held: dict[str, list[str]], session: str, tab: str) -> bool:
    tabs = held.get(session, [])
    if tab not in tabs:
        return False
    tabs.remove(tab)
    if not tabs:
        del held[session]
    return True


ADMISSION = Admission()
QUEUE_JOIN = "/gradio_api/queue/join"  # where the browser and gradio_client push every event
CANCEL = "/gradio_api/cancel"  # where gradio_client's Job.cancel asks Gradio to drop or stop an event


class AdmissionGuard:
    """ASGI middleware: a model job pushed to Gradio's queue by a session with no place left (ADMISSION) is answered
    422 with BUSY_MESSAGE in Gradio's validation shape, before Gradio reads its inputs: gradio_client raises it as a
    ValidationError with the message, the browser shows it by the form. (An event's `validator=` would see the
    session too, but Gradio then preprocesses every input once more at push time, and an unreadable upload there
    comes back as a bare 400 without its message.) A cancel of a waiting job (gradio_client's Job.cancel, which
    Gradio's /cancel answers without running the handler or Stop) gives its place back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watched = scope["type"] == "http" and scope["method"] == "POST"
        if not (watched and scope["path"].endswith((QUEUE_JOIN, CANCEL))):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        try:
            pushed = json.loads(body)
        except ValueError:  # Gradio answers it
            pushed = {}
        session = pushed.get("session_hash") if isinstance(pushed, dict) else None
        tab = ADMISSION.tabs.get(_index(pushed.get("fn_index"))) if isinstance(pushed, dict) else None
        cancel = scope["path"].endswith(CANCEL)  # gradio_client's Job.cancel: Gradio drops a waiting job unstarted
        if not cancel and tab is not None and not ADMISSION.admit(session, tab):
            refusal = [{"__type__": "validate", "is_valid": False, "message": BUSY_MESSAGE, "parameter_name": "job"}]
            await JSONResponse({"detail": refusal}, status_code=422)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, replay, watch)
        finally:
            if tab is not None and session is not None and (cancel or status[:1] != [200]):
                ADMISSION.not_queued(session, tab)  # a running job's own end gives its place back (finished)


def _index(value: Any) -> int | None:
    """An event's fn_index as Gradio reads it (its pydantic model takes "3" for 3 too)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class ReaderWatch:
    """Whether anyone still reads a job's events. A closed browser or a killed gradio_client closes its event
    stream and Gradio stops the job itself (Queue.clean_events); a /call POST whose GET is never sent has no stream
    to close, and Gradio would run the job to the end. Gradio has no public flag for a reader, so this looks at the
    session's queue of undelivered messages (routes.py's readers take from it as they stream): a look that finds it
    shorter than the last look plus the messages sent since (one per handler yield, `sent`) saw a reader take some,
    so a reader that lags behind is alive; none taken for `timeout_s` means nobody is reading."""

    def __init__(self, request: gr.Request | None, timeout_s: float | None) -> None:
        self.messages = _pending_messages(request) if timeout_s is not None else None
        self.timeout_s = timeout_s
        self.read_at = time.monotonic()
        self.last = self.messages.qsize() if self.messages is not None else 0  # what was queued before the job ran
        self.since = 0  # messages sent since the last look

    def sent(self, outputs: Outputs) -> Outputs:
        """`outputs` as the handler yields them: each yield becomes one message for the reader."""
        self.since += 1
        return outputs

    def gone(self) -> bool:
        if self.messages is None:  # not served by Gradio's queue (a direct call), or no timeout: nothing to watch
            return False
        now, unread = time.monotonic(), self.messages.qsize()
        if unread < self.last + self.since:
            self.read_at = now
        self.last, self.since = unread, 0
        return now - self.read_at > self.timeout_s


def _pending_messages(request: gr.Request | None) -> Any:
    """The session's undelivered-message queue in Gradio's Queue (pending_messages_per_session), or None."""
    app = getattr(getattr(request, "request", None), "app", None)
    queue = getattr(app.get_blocks(), "_queue", None) if hasattr(app, "get_blocks") else None
    if queue is None or request is None:
        return None
    return queue.pending_messages_per_session.get(request.session_hash)


def stream_job(tab: str, request: gr.Request | None, status: Component, start: Callable[[CancelToken], Iterator[Any]],
               render: Callable[[Any], Outputs | None], what: str, *, results: Mapping[Component, str] | None = None,
               partial: Callable[[], Outputs] | None = None) -> Iterator[Outputs]:
    """Run one engine job for a tab's handler and stream it to the tab's outputs.

    `start(cancel)` checks the form and returns the engine's events: a StudioError there (bad input) becomes
    gr.Error before any model work. Progress events update `status`; `render(event)` turns any other event into
    outputs ({component: value}; None: nothing to show). Every Result goes into the session's history.

    `results` are the tab's result components and their labels: once a run starts they are labelled as the
    previous run's until this run writes them ("live" while it streams into them, the plain label once its result
    is in), so a stale gallery never passes for the current one. `partial()` gives what a stopped run offers (the
    last preview, say); Stop shows it, or this loop when the engine stops first (an API caller's cancel).

    Once the run is stopped nothing more of it is shown: Stop (`stop_button`) has the last word. A StudioError
    while running shows as a failed status and a gr.Error; any other exception is a bug: logged, shown as a generic
    message, and the app stays up. The engine's generator is closed in every case, so its lock and attention
    processors unwind before the next job (Gradio's cancel raises GeneratorExit at this generator's yield)."""
    key, results = (session_id(request), tab), dict(results or {})
    job = JOBS.start(key, results, partial)
    ADMISSION.started(*key)
    try:
        events = start(job.cancel)
    except StudioError as error:
        _finish(key, job)
        raise gr.Error(public_message(str(error))) from error
    except Exception as error:
        _finish(key, job)
        raise gr.Error(_unexpected(what, error)) from error
    labels, reader = ResultLabels(results), ReaderWatch(request, JOBS.reader_timeout_s)
    try:
        yield reader.sent({status: progress_html(0, 1, job.text), **labels.mark(results, "previous run")})
        for event in events:
            if not job.cancel.cancelled and reader.gone():
                log.info("%s: nobody has read its events for %.0f s; stopping it", what, reader.timeout_s)
                job.cancel.cancel()  # the engine stops within a step: the model is free for the next job
            if isinstance(event, Progress):
                if job.cancel.cancelled:
                    continue  # Stop has said where the run stopped: the counter stays where it said
                job.step, job.total = event.step, event.total
                job.text = event.message or f"Step {event.step} / {event.total} · {time.monotonic() - job.started:.1f} s"
                outputs = {status: progress_html(event.step, event.total, job.text)}
            else:
                outputs = render(event)
                if isinstance(event, Result):
                    HISTORY.add(key[0], tab, event)
            if not outputs or job.cancel.cancelled:  # a stopped run shows nothing more: Stop said where it ended
                continue
            if relabelled := labels.mark(outputs, None if isinstance(event, Result) else "live"):
                yield reader.sent(relabelled)
            yield reader.sent(outputs)
    except CancelledError:
        yield _with_status(job.stopped(), status)
    except StudioError as error:
        message = public_message(str(error))
        yield {status: progress_html(job.step, job.total, message, "failed")}
        raise gr.Error(message) from error
    except Exception as error:
        message = _unexpected(what, error)
        yield {status: progress_html(job.step, job.total, message, "failed")}
        raise gr.Error(message) from error
    finally:
        job.cancel.cancel()
        if hasattr(events, "close"):
            events.close()  # unwinds the engine job (its lock, its attention processors) when stopped mid-run
        _finish(key, job)


def _finish(key: tuple[str, str], job: Job) -> None:
    JOBS.finish(key, job)
    ADMISSION.finished(*key)


def remembering(render: Callable[[Any], Outputs | None], kept: Sequence[Any]) -> tuple[Callable, Callable]:
    """`render` that also remembers the last value it showed in each of the `kept` components, and `partial()`:
    those values, what a stopped run offers (the last mask, the last preview)."""
    last: Outputs = {}

    def remember(event: Any) -> Outputs | None:
        outputs = render(event)
        last.update({component: value for component, value in (outputs or {}).items() if component in kept})
        return outputs

    return remember, lambda: dict(last)


STATUS_KEY = "status"  # Job.stopped()'s place for the status line, which each caller maps to its component


def _with_status(outputs: Outputs, status: Component) -> Outputs:
    return {(status if component == STATUS_KEY else component): value for component, value in outputs.items()}


class ResultLabels:
    """The labels of a tab's result components through one run: "<label> · previous run" once it starts, "· live"
    while it streams into them, the plain label for its result. A change goes out as its own label-only update,
    so the values themselves stay plain (what an API caller receives)."""

    def __init__(self, results: Mapping[Component, str]) -> None:
        self.results = results
        self.shown: dict[Component, str | None] = {}

    def mark(self, components: Iterable[Component], state: str | None) -> Outputs:
        """Label updates for the result components among `components` whose state changes to `state`."""
        changes = {}
        for component in components:
            if component in self.results and self.shown.get(component, "") != state:
                self.shown[component] = state
                label = self.results[component] if state is None else f"{self.results[component]} · {state}"
                changes[component] = gr.update(label=label)
        return changes


def _labelled(outputs: Outputs, results: Mapping[Component, str], state: str | None) -> Outputs:
    """`outputs` with each result component's value and label in one update (Stop's outputs: the partial result)."""
    labelled = {}
    for component, value in outputs.items():
        if component in results:
            label = results[component] if state is None else f"{results[component]} · {state}"
            is_update = isinstance(value, dict) and value.get("__type__") == "update"
            value = {**value, "label": label} if is_update else gr.update(value=value, label=label)
        labelled[component] = value
    return labelled


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


RUN_CLASS, STOP_CLASS = "dcs-run", "dcs-stop"  # what the keyboard shortcuts click (KEYBOARD_JS)
KEYS_HELP = "Ctrl+Enter runs · Esc stops"


def run_and_stop(label: str, elem_id: str, stop_id: str) -> tuple[gr.Button, gr.Button]:
    """A tab's Run button with its Stop beside it (Ctrl+Enter and Esc click them)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=elem_id, scale=3, elem_classes=[RUN_CLASS])
        stop = gr.Button("Stop", variant="stop", elem_id=stop_id, scale=1, elem_classes=[STOP_CLASS])
    return run, stop


# Ctrl+Enter (Cmd+Enter) clicks the visible tab's main action, Esc its Stop: the page-wide shortcuts, as the
# web UIs users come from have them. Only the visible tab's buttons have a layout box (offsetParent).
KEYBOARD_JS = f"""
() => {{
  document.addEventListener('keydown', (event) => {{
    const run = event.key === 'Enter' && (event.ctrlKey || event.metaKey);
    if (!run && event.key !== 'Escape') return;
    const selector = run ? '.{RUN_CLASS}' : '.{STOP_CLASS}';
    const button = [...document.querySelectorAll(selector)].find((element) => element.offsetParent !== null);
    if (!button) return;
    event.preventDefault();
    button.click();
  }});
}}
"""


# Every job event queues on the one model (one job at a time); the status line shows its progress.
JOB_EVENT = dict(concurrency_id="model", show_progress="hidden")


def apply_limits(demo: StudioBlocks, jobs_per_session: int | None, side_concurrency: int | None,
                 reader_timeout_s: float | None) -> None:
    """Inside `demo`'s Blocks, once every event is wired: a job nobody has read for `reader_timeout_s` is stopped
    (ReaderWatch; None: never), at most `jobs_per_session` model jobs per session (ADMISSION, enforced by
    AdmissionGuard in the launched app's middleware), and at most `side_concurrency` of each side handler at once
    (every event Gradio would run without a limit: previews, maps, plots, renders; not Stop, which must run beside
    the job it stops)."""
    JOBS.reader_timeout_s = reader_timeout_s
    ADMISSION.per_session = jobs_per_session
    # the tab whose handler each model event runs: the key of its Stop
    ADMISSION.tabs = {index: fn.fn.__self__.name for index, fn in demo.fns.items() if fn.concurrency_id == "model"}
    if jobs_per_session is not None:
        demo.unload(ADMISSION.forget)
        demo.failed_before_start.append(ADMISSION.failed_before_start)
    for fn in demo.fns.values():
        if fn.concurrency_limit is None and fn.concurrency_id not in ("stop", "model"):
            fn.concurrency_limit = side_concurrency


STOP_SETTLE_S = 10.0  # how long Stop waits for the run's last step to land before it repeats its final word


def stop_button(button: gr.Button, status: Component, runs: list[Any], tab: str, api_name: str,
                results: Sequence[Component] = ()) -> None:
    """Wire a tab's Stop: set the engine's token (it stops between steps) and cancel the running events (Gradio
    raises GeneratorExit at the handler's next yield; a queued run is dropped). Stop says at once where the run
    stopped and offers its partial result in `results`, then says it again once the run has unwound, so a step
    that was in flight when Stop was pressed cannot overwrite it. Runs beside the job, not queued behind it."""

    def stop(request: gr.Request) -> Iterator[Any]:
        job = JOBS.cancel((session_id(request), tab))
        if job is None:
            ADMISSION.dropped(session_id(request), tab)  # a waiting run, which `cancels=` drops from the queue
            yield gr.skip()
            return
        yield _with_status(job.stopped(), status)
        if job.finished.wait(STOP_SETTLE_S):
            yield _with_status(job.stopped(), status)

    button.click(stop, None, [status, *results], cancels=runs, api_name=api_name, api_visibility="undocumented",
                 concurrency_limit=None, concurrency_id="stop", show_progress="hidden")


CSS = """
.dcs-progress { padding: 2px 0 6px; }
.dcs-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dcs-fill { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.dcs-progress.done .dcs-fill { background: var(--color-green-500, #22c55e); }
.dcs-progress.stopped .dcs-fill, .dcs-progress.failed .dcs-fill { background: var(--color-red-500, #ef4444); }
.dcs-progress.failed .dcs-text { color: var(--color-red-500, #ef4444); }
.dcs-progress.stopped .dcs-text { color: var(--color-red-600, #dc2626); font-weight: 600; }
.dcs-text { font-size: var(--text-sm); color: var(--body-text-color-subdued); margin-top: 4px; }
"""
