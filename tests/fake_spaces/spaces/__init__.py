"""A stand-in for Hugging Face's `spaces` package (ZeroGPU), for tests: `GPU(duration=...)` runs a generator function
as a ZeroGPU worker would see it. Its arguments and every value it yields go through pickle (the worker is a forked
process: nothing else crosses), closing the stream closes the job (spaces' stop event), and each call's duration is
recorded: in `calls`, and as a JSON line in $FAKE_SPACES_LOG when set (for a Space started as a subprocess)."""

from __future__ import annotations

import inspect
import json
import os
import pickle

calls: list[dict] = []  # {"entry": the engine entry point, "duration": seconds asked, "units": the job's cost}


def GPU(task=None, *, duration=None, size=None):  # noqa: N802 (spaces' own name)
    def decorate(function):
        if not inspect.isgeneratorfunction(function):
            raise NotImplementedError("this stand-in wraps generator functions only (what studio.ui.gpu passes)")

        def gradio_handler(*args, **kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            engine_key, entry, _, _, cost = args
            call = {"entry": entry, "duration": seconds, "units": None if cost is None else cost.units}
            calls.append(call)
            if log := os.environ.get("FAKE_SPACES_LOG"):
                with open(log, "a", encoding="utf-8") as file:
                    file.write(json.dumps(call) + "\n")
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))  # into the worker
            events = function(*args, **kwargs)
            try:
                for event in events:
                    yield pickle.loads(pickle.dumps(event))  # back from the worker
            finally:
                events.close()

        return gradio_handler

    return decorate if task is None else decorate(task)


def gradio_auto_wrap(task):
    """Gradio calls this on every event handler on a Space (gradio/block_function.py); spaces leaves them unwrapped
    unless SPACES_GRADIO_AUTO_WRAP is set, as here."""
    return task
