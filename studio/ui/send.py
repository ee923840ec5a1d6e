"""Send to tab: a result (or an attention map's mask) from one tab becomes the input of another, and that tab opens.

Every tab that offers its results has `send_buttons` (target tab id -> button) fed by its `sending` state; a tab
that shows attention maps has `mask_buttons` fed by `map_sending`. `connect` wires each button to the target tab's
`receive` / `receive_mask` (`parts.Tab`) and selects that tab, so the loop "attention map -> editable mask ->
local edit" is two clicks. No model work: the events are instant and private (not in the API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gradio as gr
from gradio.components import Component

from studio.ui.parts import Sendable, Tab, instant

def connect(tabs: gr.Tabs, pages: Iterable[Tab]) -> None:
    """Wire every send and mask button of `pages` to the tab it names (in the app's gr.Tabs `tabs`)."""
    by_name = {page.name: page for page in pages}
    for page in by_name.values():
        for target, button in page.send_buttons.items():
            _wire(button, page.sending, by_name[target], by_name[target].receive, tabs)
        for target, button in page.mask_buttons.items():
            _wire(button, page.map_sending, by_name[target], by_name[target].receive_mask, tabs)


def _wire(button: gr.Button, source: gr.State, target: Tab, receive: Callable[[Sendable], dict[Component, Any]],
          tabs: gr.Tabs) -> None:
    def deliver(item: Sendable | None) -> dict[Component, Any]:
        if item is None:
            raise gr.Error("Nothing to send yet: make a result first.")
        return {**receive(item), tabs: gr.Tabs(selected=target.name)}

    button.click(deliver, source, [*target.receives, tabs], **instant(f"send-{target.name}"))

