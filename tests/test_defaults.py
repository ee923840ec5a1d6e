"""The defaults the benchmarks chose, pinned where a test can notice them change.

Protects: inversions are made (and edited) at w = 3, not SD's 7.5 (bench/results/first_edits.md: a red ->
yellow P2P edit of a null-text inversion turns the blue background purple at 7.5 and keeps it blue at 3);
DiffEdit composites the original pixels outside its mask (the same bench: background 26-29 dB -> 38-42 dB);
the Inversion tab starts at that w and says why; Generate shows attention maps unless asked not to."""

from __future__ import annotations

import gradio as gr

from studio.editing.diffedit import DiffEditSpec
from studio.inversion import InversionSpec
from studio.ui import generate, inversion


def test_inversions_are_made_and_edited_at_w_3():
    assert InversionSpec().guidance_scale == 3


def test_diffedit_composites_the_original_outside_its_mask():
    assert DiffEditSpec("a red circle", "a yellow circle").composite is True


def test_the_tabs_start_at_these_defaults(tiny_engine):
    with gr.Blocks():
        inversion_tab = inversion.InversionTab(tiny_engine)
        generate_tab = generate.GenerateTab(tiny_engine)
    guidance = inversion_tab.form["guidance_scale"]
    assert guidance.value == 3 and "7.5" in guidance.info and "background" in guidance.info
    assert generate_tab.form["capture_attention"].value is True
