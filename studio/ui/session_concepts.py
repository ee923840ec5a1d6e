"""The concepts each browser session uses: names loaded in the engine's ConceptRegistry, with this session's scales.

The engine holds the weights, one copy for every session; a session only says which of them its jobs run with
(`spec.concepts`), so one user's LoRA never changes another user's pictures. A concept leaves the engine when the
last session using it lets it go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import gradio as gr

from studio.specs import CONCEPT_SCALE, ConceptUse
from studio.ui.parts import session_id

if TYPE_CHECKING:
    from studio.engine import Engine

Spec = TypeVar("Spec")


class SessionConcepts:
    """Per browser session: concept name -> scale, in the order the session added them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scales: dict[str, dict[str, float]] = {}

    def uses(self, session: str) -> tuple[ConceptUse, ...]:
        with self._lock:
            return tuple(ConceptUse(name, scale) for name, scale in self._scales.get(session, {}).items())

    def add(self, session: str, name: str, scale: float = 1.0) -> None:
        CONCEPT_SCALE.check("scale", scale)
        with self._lock:
            self._scales.setdefault(session, {})[name] = float(scale)

    def set_scale(self, session: str, name: str, scale: float) -> None:
        CONCEPT_SCALE.check("scale", scale)
        with self._lock:
            if name not in self._scales.get(session, {}):
                raise KeyError(name)
            self._scales[session][name] = float(scale)

    def remove(self, session: str, name: str) -> bool:
        """Drop `name` from the session; True when no session uses it any more (the engine may unload it)."""
        with self._lock:
            self._scales.get(session, {}).pop(name, None)
            return self._unused(name)

    def forget(self, session: str) -> list[str]:
        """Drop a closed session; the names no session uses any more."""
        with self._lock:
            return [name for name in self._scales.pop(session, {}) if self._unused(name)]

    def _unused(self, name: str) -> bool:
        """No session uses `name` (call with the lock held)."""
        return not any(name in scales for scales in self._scales.values())


SESSION_CONCEPTS = SessionConcepts()


def personalized(spec: Spec, request: gr.Request | None) -> Spec:
    """`spec` with the concepts this browser session uses (what every tab's job runs with)."""
    return replace(spec, concepts=SESSION_CONCEPTS.uses(session_id(request)))


def session_forgetter(engine: Engine) -> Callable[[gr.Request], None]:
    """The app's unload handler: a closed browser tab's concepts go, and the engine unloads those no other session
    uses."""

    def forget_session(request: gr.Request) -> None:
        for name in SESSION_CONCEPTS.forget(session_id(request)):
            engine.concepts.unload(name)

    return forget_session


def concept_rows(engine: Engine, session: str) -> list[list[Any]]:
    """The session's concepts as table rows: name, kind, words, scale, file."""
    rows = []
    for use in SESSION_CONCEPTS.uses(session):
        info = engine.concepts.info(use.name)
        rows.append([use.name, info.kind, ", ".join(info.words), use.scale, str(info.path.name)])
    return rows
