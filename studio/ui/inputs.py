"""Every input answered: what Gradio cannot read becomes a message naming the field, and no message shows a path.

Gradio turns a request's values into a handler's arguments in `Blocks.preprocess_data`: it moves uploaded files
into its cache (refusing paths that were not uploaded: InvalidPathError), validates the payload against the
component's data model (pydantic), then calls the component's `preprocess`, which decodes images in full
(gradio/image_utils.py preprocess_image) and wraps any failure in ComponentProcessingError. With
`show_error=False` (launch_settings: tracebacks and server paths stay on the server) only a gr.Error's text reaches
the caller, so every such failure answered `{"error": null}`: a corrupt, truncated or oversized image, a text file
named .png, a NaN seed (`int(round(nan))`), a string where a file goes. `StudioBlocks` answers each with a gr.Error
"<field>: <what is wrong>", and NaN in any number box or slider (which passes Gradio's bounds) too. Gradio has no hook for this (an event's `validator=` runs after the same preprocess),
hence the subclass; it changes nothing else.
"""

from __future__ import annotations

import errno
import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import gradio as gr
import pydantic
from gradio.exceptions import InvalidPathError
from gradio.utils import get_upload_folder
from PIL import Image, UnidentifiedImageError

from studio.images import header_size, too_large_message
from studio.specs import shown

log = logging.getLogger(__name__)

# An absolute path (or a home-relative one) not inside a URL or a relative path: "/tmp/gradio/ab12/photo.png",
# '~/models/x.ckpt'. The last part is kept; the folders (the Gradio temp dir, the repository, a home) are not.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])~?/(?:[^\s'\"`()\[\]{}<>,;:/]+/)*([^\s'\"`()\[\]{}<>,;:/]+)/?")
MAX_MESSAGE_CHARS = 600  # a message echoing a hostile value (a megabyte of prompt) is cut in the middle


def public_message(text: str) -> str:
    """`text` as a user may see it: every absolute path shortened to the file's name, and cut to
    MAX_MESSAGE_CHARS. Server paths say where the app, its temp files and its user's home are; the name alone still
    tells the user which of their files is meant."""
    text = _ABSOLUTE_PATH.sub(lambda match: match.group(1), text)
    if len(text) > MAX_MESSAGE_CHARS:
        half = MAX_MESSAGE_CHARS // 2
        text = f"{text[:half]} … {text[-half:]}"
    return text


class InputRefused(gr.Error):
    """An input of an event refused before its handler ran (what StudioBlocks.preprocess_data raises)."""


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose inputs Gradio fails to read are refused with a gr.Error that names the field and says what
    is wrong, in words and with no server path (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # called with (the event's BlockFunction, its session) when an event fails before its handler ran (an input
        # refused): whoever counted the event as waiting (stream.ADMISSION) gives its place back
        self.failed_before_start: list[Callable[[Any, str | None], None]] = []

    async def process_api(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().process_api(block_fn, inputs, *args, **kwargs)
        except InputRefused:  # the handler never ran
            for hook in self.failed_before_start:
                hook(block_fn, kwargs.get("session_hash"))
            raise

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            values = await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error as error:  # Gradio's own message (a number out of bounds, SVG refused): the field named first
            _, component = _failed_input(error.__traceback__)
            named = error.message if component is None else f"{field_name(component)}: {error.message}"
            raise InputRefused(public_message(named), print_exception=False) from error
        except Exception as error:  # any failure to read an input becomes its message
            index, component = _failed_input(error.__traceback__)
            payload = inputs[index] if index is not None and index < len(inputs) else None
            message = f"{field_name(component)}: {input_problem(_original(error), payload, component)}"
            log.info("input refused: %s (%s: %s)", message, type(_original(error)).__name__, _original(error))
            raise InputRefused(public_message(message), print_exception=False) from error
        # NaN passes Gradio's bounds (every comparison with it is False) and a browser never sends it (JSON has no
        # NaN): refused in every number box and slider, also those a job ignores (a control row left unused)
        for component, value in zip(block_fn.inputs, values, strict=False):
            if isinstance(component, (gr.Number, gr.Slider)) and isinstance(value, float) and not math.isfinite(value):
                raise InputRefused(f"{field_name(component)}: a finite number is needed here, not {value}.",
                               print_exception=False)
        return values

    async def postprocess_data(self, block_fn: Any, predictions: Any, state: Any) -> Any:
        """Gradio writes every image and file a handler returns into its cache folder; when that fails (a full disk)
        the user got `{"error": null}`. The failure is logged and answered."""
        try:
            return await super().postprocess_data(block_fn, predictions, state)
        except gr.Error:
            raise
        except Exception as error:
            original = _original(error)
            log.error("could not send a result: %s: %s", type(original).__name__, original)
            if isinstance(original, OSError) and original.errno == errno.ENOSPC:
                raise gr.Error("The server's disk is full, so the result could not be saved and sent: try again "
                               "later (whoever runs the studio must free space in its temporary folder).",
                               print_exception=False) from error
            raise gr.Error(f"The result could not be sent ({type(original).__name__}); see the server log.",
                           print_exception=False) from error

    async def call_function(self, block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Gradio's call of a handler (and of each step of a generator). A job's handler answers its own errors
        (stream.stream_job); the small UI helpers (a gallery's select, an example's load, "reuse seed") do not, and
        a caller that sends them what the browser never would (one argument too many, a string for the settings
        they read) got `{"error": null}`: such a failure is logged and answered here."""
        try:
            return await super().call_function(block_fn, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # a helper's failure on values the UI never sends
            name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this action"
            log.exception("%s failed", name)
            raise gr.Error(f"{name} could not use the values sent ({type(error).__name__}); see the API page for "
                           "what it takes.", print_exception=False) from error


def field_name(component: Any) -> str:
    """How the user knows a component: its label, else its kind ("Number")."""
    if component is None:
        return "The request"
    label = str(getattr(component, "label", None) or "")
    if len(label) > 40 and ":" in label:  # "Canvas: paint strokes; with ...": the label's help is not its name
        label = label.split(":", 1)[0]
    return label or type(component).__name__


def input_problem(error: BaseException, payload: Any, component: Any = None) -> str:
    """What is wrong with an input Gradio could not read, in words a user can act on."""
    if isinstance(component, (gr.Number, gr.Slider)) and isinstance(error, (ValueError, TypeError, OverflowError)):
        return f"a finite number is needed here, not {shown(payload)}."
    if isinstance(error, Image.DecompressionBombError):
        refused = (path for path in _uploaded_paths(payload) if _over_limit(path))  # an editor's layer, say
        return too_large_message(error, next(refused, None))
    if isinstance(error, UnidentifiedImageError):
        return ("the file is not an image this app can read (damaged, or another kind of file named as an image): "
                "use PNG, JPEG, WebP or TIFF.")
    if isinstance(error, FileNotFoundError):  # the cache's sweep deleted the upload (delete_cache)
        return "the upload has expired (uploads are kept for a while, then deleted): upload it again."
    if isinstance(error, OSError):  # PIL: "image file is truncated", "broken PNG file", "unrecognized data stream"
        return "the image is damaged or truncated and cannot be read: export it again and upload it."
    if isinstance(error, InvalidPathError):
        return ("only a file uploaded with this request is accepted, not a path on the server: upload the file "
                "(with gradio_client: handle_file(path)).")
    if isinstance(error, pydantic.ValidationError):
        return "the value sent is not what this field takes (a file field takes an uploaded file; see the API page)."
    if isinstance(error, (ValueError, TypeError, OverflowError)):
        return f"the value sent cannot be used here ({error})."
    return f"the value sent could not be read ({type(error).__name__})."


def _failed_input(traceback: TracebackType | None) -> tuple[int | None, Any]:
    """(index, component) of the input Gradio was reading when it failed: `i` and `block` in the frame of
    gr.Blocks.preprocess_data, the loop over the inputs. (None, None) when the failure came before that loop."""
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is gr.Blocks.preprocess_data.__code__:
            return frame.f_locals.get("i"), frame.f_locals.get("block")
        traceback = traceback.tb_next
    return None, None


def _original(error: BaseException) -> BaseException:
    """The error under Gradio's ComponentProcessingError wrapper (its __cause__)."""
    while isinstance(error, gr.exceptions.ComponentProcessingError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _over_limit(path: Path) -> bool:
    size = header_size(path)
    return size is not None and Image.MAX_IMAGE_PIXELS is not None and size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS


def _uploaded_paths(payload: Any) -> Iterator[Path]:
    """The files of an input's payload ({"path": ...}, nested for an ImageEditor) that lie in Gradio's upload
    folder: only files the request uploaded are opened, never a path a caller names."""
    folder = Path(get_upload_folder()).resolve()
    if isinstance(payload, dict):
        path = payload.get("path")
        if isinstance(path, str) and Path(path).resolve().is_relative_to(folder) and Path(path).is_file():
            yield Path(path)
        for value in payload.values():
            yield from _uploaded_paths(value)
    elif isinstance(payload, (list, tuple)):
        for value in payload:
            yield from _uploaded_paths(value)
