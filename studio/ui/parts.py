"""Pieces several tabs share beside their form and their jobs: the shape of a tab (`Tab`), a table's rows, the
settings view, the model line of a tab's help text, the options of view-only events, and the Inversion tab's
inversion as an input of the editing tabs."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd  # gr.Dataframe hands tables over as DataFrames unless type='array'

from studio.errors import InvalidInputError
from studio.ui.form import Field, Form

if TYPE_CHECKING:
    from gradio.components import Component

    from studio.engine import Engine
    from studio.inversion import Inversion


class Tab:
    """The shape every tab shares, built in the current Blocks/Tab from its module's field table (`fields`):
    `layout` places the form and the outputs, `run` streams a job through `render(event)`, `wire` connects the
    events. `inversion_state` is the Inversion tab's picked Inversion, for the tabs that edit one (None: no
    Inversion tab)."""

    fields: tuple[Field, ...] = ()

    def __init__(self, engine: Engine, inversion_state: gr.State | None = None) -> None:
        self.engine, self.form, self.inversion_state = engine, Form(self.fields, engine), inversion_state
        self.layout()
        self.wire()

    def layout(self) -> None:
        raise NotImplementedError

    def wire(self) -> None:
        raise NotImplementedError


def table_rows(table: Any) -> list[list[Any]]:
    """Rows of a gr.Dataframe value: a list of lists (type="array"), a DataFrame, or the API's dict."""
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.values.tolist()
    if isinstance(table, dict):
        return [list(row) for row in table.get("data") or []]
    return [list(row) for row in table]


def settings_view(elem_id: str, label: str = "Settings of this result", height: int = 200) -> gr.JSON:
    """The settings that produced the result shown (the reproduction record)."""
    return gr.JSON(label=label, elem_id=elem_id, height=height)


def model_line(engine: Engine) -> str:
    """The model's name as a tab's help text begins with it (Markdown)."""
    return f"Model **{html.escape(str(engine.model_name))}**"


def instant(concurrency_id: str) -> dict[str, Any]:
    """Options of an event that only redraws the view (no model work): not queued behind jobs, not in the API."""
    return dict(concurrency_limit=None, concurrency_id=concurrency_id, show_progress="hidden",
                api_visibility="private")


def with_inversion(inputs: Mapping[str, Component], inversion_state: gr.State | None) -> dict[str, Component]:
    """An editing tab's job inputs plus the Inversion tab's inversion (an empty state when there is no such tab)."""
    return {**inputs, "inversion": inversion_state if inversion_state is not None else gr.State(None)}


def chosen_inversion(values: Mapping[str, Any], missing: str) -> Inversion | None:
    """The Inversion tab's inversion when "use the inversion" is ticked; `missing` is the error when there is none."""
    if not values.get("use_inversion"):
        return None
    if values.get("inversion") is None:
        raise InvalidInputError(missing)
    return values["inversion"]
