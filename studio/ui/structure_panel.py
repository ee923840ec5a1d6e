"""The Structure accordion of the editing tabs (SDEdit, Prompt-to-Prompt, DiffEdit, Inversion): the Structure tab's
control rows and image-prompt row (`studio.ui.structure`, reused, not copied), compact and closed, so an edit can
sample under a ControlNet (Zhang, Rao & Agrawala 2023), a T2I-Adapter (Mou et al. 2024) or an IP-Adapter image prompt
(Ye et al. 2023, eq. 5: Z = Attn(Q, K, V) + lambda Attn(Q, K', V')).

Each row derives its map (drawing / OpenCV Canny outline / shapes layout from colours) from the panel's own picture
when one is drawn or uploaded on it, else from the tab's own image (SDEdit's canvas: strokes plus an outline of
them). The job takes it as its spec's `structure` and `structure_images=` (`engine.sdedit`, `p2p`, `diffedit`,
`invert`); its settings carry the structure, and the row fields restore from a PNG as the Structure tab's do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from studio.errors import InvalidInputError
from studio.structure.spec import StructureImages, StructureSpec
from studio.ui.form import Field, Form, spec_values
from studio.ui.parts import instant
from studio.ui.structure import (
    BRUSH,
    IMAGE_PROMPT_PREFIX,
    ROWS,
    canvas_picture,
    channel_only,
    control_row_fields,
    image_prompt_fields,
    row_field,
    source_for,
    structure_from_values,
    structure_images,
)
from studio.ui.structure_rows import place_row_settings

if TYPE_CHECKING:
    from studio.engine import Engine

PICTURE = "structure_picture"  # the panel's own picture: a drawing or an upload the rows read instead of the tab's


def picture_field(tab: str) -> Field:
    return Field(PICTURE, lambda engine: gr.ImageEditor(
        label="Control picture (optional): draw or upload one; left empty, the rows read this tab's image",
        type="numpy", image_mode="RGBA", format="png", canvas_size=(engine.native_size,) * 2, height=260,
        brush=gr.Brush(default_size=8, colors=BRUSH, default_color=BRUSH[0]),
        layers=gr.LayerOptions(allow_additional_layers=False, layers=["strokes"]), transforms=(),
        elem_id=f"{tab}-structure-picture"), in_spec=False)


def own_picture(value: dict | None, size: int) -> np.ndarray | None:
    """The panel's picture as one RGB image, or None when nothing is drawn or uploaded on it."""
    try:
        return canvas_picture(value, size)
    except InvalidInputError:  # blank: the rows read the tab's own image
        return None


class StructurePanel:
    """A tab's Structure accordion: its fields (append them to the tab's field table), its layout, its events and
    the structure of a run."""

    def __init__(self, tab: str) -> None:
        self.tab = tab
        self.fields = (picture_field(tab),
                       *(field for row in range(1, ROWS + 1)
                         for field in control_row_fields(row, tab, start_off=True, picture="the picture")),
                       *image_prompt_fields(tab))

    def place(self, form: Form, engine: Engine) -> None:
        """A closed accordion with the rows (and the image prompt where an IP-Adapter is loaded); without controls
        the rows are hidden and one line says why."""
        controls, image_prompt = bool(engine.model.controls), engine.model.image_prompt is not None
        with gr.Accordion("Structure: ControlNet, T2I-Adapter, image prompt", open=False,
                          elem_id=f"{self.tab}-structure"):
            if not controls:
                gr.Markdown("No control models are loaded for this model: load a ControlNet or T2I-Adapter made for "
                            "it (`--controlnet`, `--t2i-adapter`).", elem_id=f"{self.tab}-structure-no-controls")
            with gr.Group(visible=controls):
                form.place(PICTURE)
                for row in range(1, ROWS + 1):
                    place_row_settings(form, row)
            with gr.Group(visible=image_prompt):
                with gr.Row():
                    form.place("image_prompt_on", "image_prompt_scale")
                with gr.Row():
                    form.place("image_prompt_mode", "image_prompt_weight", "image_prompt_schedule")
                form.place("image_prompt_reference")

    def wire(self, form: Form, engine: Engine) -> None:
        """A control just picked sets the map source that fits it; the channel mode shows its weight and schedule."""
        for row in range(1, ROWS + 1):
            form[row_field(row, "control")].input(lambda control: source_for(engine, control),
                                                  form[row_field(row, "control")], form[row_field(row, "map")],
                                                  **instant(f"{self.tab}-view"))
        for prefix in [*(f"row{row}_" for row in range(1, ROWS + 1)), IMAGE_PROMPT_PREFIX]:
            form[f"{prefix}mode"].change(channel_only, form[f"{prefix}mode"],
                                         form.components([f"{prefix}weight", f"{prefix}schedule"]),
                                         **instant(f"{self.tab}-view"))

    def structure(self, values: Mapping[str, Any], image: np.ndarray | None,
                  size: int) -> tuple[StructureSpec | None, StructureImages | None]:
        """The run's structure and its images: (None, None) with no row picked and the image prompt off. The rows
        read the panel's own picture, else `image` (the tab's); an empty map, a missing picture or a missing
        reference raise InvalidInputError. Ranges and control names are the engine's to check."""
        structure, rows = structure_from_values(spec_values(self.fields, values), values)
        if structure.empty:
            return None, None
        picture = own_picture(values.get(PICTURE), size)
        picture = image if picture is None else picture
        if rows and picture is None:
            raise InvalidInputError("The structure rows have no picture to read: draw or upload a control picture "
                                    "in the Structure panel (or give this tab its image).")
        return structure, structure_images(values, structure, rows, lambda row: picture, (size, size))[0]
