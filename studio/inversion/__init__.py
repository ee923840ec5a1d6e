"""Inversion: map a real image into the model's latent trajectory so it can be reconstructed and
edited like a generated one (DDIM inversion, Song et al. 2021 §4.3; null-text inversion, Mokady et al. 2023;
negative-prompt inversion, Miyake et al. 2023; EDICT, Wallace et al. 2023; BDIA, Zhang et al. 2023; fixed-point
inversion, Pan et al. 2023 and Garibi et al. 2024; Direct Inversion, Ju et al. 2023; edit-friendly DDPM inversion,
Huberman-Spiegelglas et al. 2024).

    for event in engine.invert(InversionSpec("a red circle", method="null_text"), image):
        ...                                      # Progress, NullTextLoss, then one InversionResult
    inversion = result.inversion                 # trajectory, null embeddings, coupled states

Methods: DDIM inversion (ddim.py), null-text inversion (null_text.py), negative-prompt inversion
(methods.py, no optimisation), EDICT (edict.py), BDIA (bdia.py), fixed-point inversion (fixed_point.py), Direct
Inversion (direct.py), edit-friendly DDPM inversion (ddpm.py). All share the pure affine DDIM step of steps.py; DDIM,
fixed-point and DDPM inversion and every reconstruction but EDICT's and BDIA's run through
studio.sampling.sample_steps, with the step rule (sampling_rule) and after-step hook (source_hook) the inversion
asks for, which its edits use too.
Under structure (InversionSpec.structure: ControlNet, T2I-Adapter, IP-Adapter) the method inverts and reconstructs
with the controls attached; the Inversion keeps them, and its edits sample under them (edit_structure).
"""

from studio.inversion.ddim import ddim_inversion_steps
from studio.inversion.guider import PerStepUncondGuidance
from studio.inversion.methods import (edit_structure, invert, reconstruction_steps, sampling_guider, sampling_rule,
                                      source_hook)
from studio.events import InversionResult  # the job's Result (defined with every event in studio.events)
from studio.inversion.result import METHOD_LABELS, METHODS, Inversion, InversionSpec
from studio.inversion.steps import StepGrid, ddim_coefficients

__all__ = [
    "METHODS", "METHOD_LABELS", "Inversion", "InversionResult", "InversionSpec", "PerStepUncondGuidance",
    "StepGrid", "ddim_coefficients", "ddim_inversion_steps", "edit_structure", "invert", "reconstruction_steps",
    "sampling_guider", "sampling_rule", "source_hook",
]
