"""Protects global guidance in the engine (issue #4): conditions batched into one UNet call per step,
settings that reproduce the run, typed errors naming the bad row, and classifier guidance that runs
only on models with a classifier, counted and timed apart from the UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import studio.generation
from studio.classifier import NoisyClassifier
from studio.errors import InvalidInputError
from studio.shapes.classifier import classifier_targets, target_log_prob
from studio.models import decode_latents
from studio.specs import ClassifierGuidanceSpec, Condition, GenerateSpec

PROMPT = "a big red circle"
COMPOSE = (Condition("a blue background", 3.0), Condition("a yellow background", -2.0, "snr", 0.5, 0.2, 1.0))


def _result(engine, spec):
    return list(engine.generate(spec))[-1]


def test_conditions_are_batched_and_the_settings_reproduce_the_run(tiny_engine):
    spec = GenerateSpec(PROMPT, seed=3, steps=3, conditions=COMPOSE, guidance_rescale=0.5)
    result = _result(tiny_engine, spec)

    assert result.unet_evaluations == spec.steps  # one batched call per step ...
    assert result.settings["nfe_per_step"] == 1 + 1 + len(COMPOSE)  # ... of 1 + K predictions
    assert result.settings["conditions"][1] == {
        "prompt": "a yellow background", "weight": -2.0, "schedule": "snr", "exponent": 0.5, "start": 0.2, "stop": 1.0,
    }
    again = GenerateSpec.from_settings(result.settings)
    assert (again.conditions, again.guidance_rescale, again.seed) == (spec.conditions, spec.guidance_rescale, spec.seed)
    np.testing.assert_array_equal(_result(tiny_engine, again).pixels, result.pixels)


def test_conditions_change_the_image(tiny_engine):
    plain = _result(tiny_engine, GenerateSpec(PROMPT, seed=3, steps=2))
    composed = _result(tiny_engine, GenerateSpec(PROMPT, seed=3, steps=2, conditions=COMPOSE))
    assert plain.settings["nfe_per_step"] == 2 and plain.settings["conditions"] == []
    assert np.abs(plain.pixels - composed.pixels).max() > 1e-3


def test_guidance_plan_lists_each_conditions_weight_per_step(tiny_engine):
    spec = GenerateSpec(PROMPT, steps=5, guidance_scale=4.0, conditions=(
        Condition("a blue background", 2.0, "ramp_up"), Condition("a yellow background", -1.0, start=0.5),
    ))
    plan = tiny_engine.guidance_plan(spec)
    assert plan.labels == [PROMPT, "a blue background", "a yellow background"]
    assert plan.weights.shape == (5, 3) and len(plan.timesteps) == 5
    assert plan.weights[:, 0].tolist() == [4.0] * 5
    assert plan.weights[:, 1].tolist() == pytest.approx([0, 0.5, 1, 1.5, 2])
    assert plan.weights[:, 2].tolist() == [0, 0, -1, -1, -1]
    assert plan.classifier_strengths is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"conditions": (Condition("a blue background"), Condition("  "))}, "Condition 2: the prompt is empty"),
        ({"conditions": (Condition("a blue dragon"),)}, "Condition 1: .*dragon"),
        ({"conditions": (Condition("a blue background", weight=31.0),)}, "Condition 1: Weight must be between"),
        ({"conditions": (Condition("a blue background", start=0.8, stop=0.2),)}, "Condition 1: start"),
        ({"conditions": (Condition("a blue background", stop=1.5),)}, "Condition 1: Stop"),
        ({"conditions": (Condition("a blue background", schedule="cosine"),)}, "Condition 1: unknown schedule"),
        ({"conditions": (Condition("a blue background", exponent=-1.0),)}, "Condition 1: Schedule exponent"),
        ({"guidance_rescale": 1.5}, "Guidance rescale"),
        ({"classifier_guidance": ClassifierGuidanceSpec("red object")}, "no noisy-latent classifier"),
    ],
    ids=["empty", "unknown-word", "weight", "start-after-stop", "stop", "schedule", "exponent", "rescale", "no-classifier"],
)
def test_bad_guidance_input_is_rejected_naming_the_row(tiny_engine, changes, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_engine.generate(GenerateSpec(PROMPT, steps=2, **changes))


def test_a_model_folder_with_a_classifier_loads_it(tiny_classifier_engine, tiny_engine):
    assert tiny_classifier_engine.model.classifier is not None
    assert "red object" in tiny_classifier_engine.classifier_targets
    assert tiny_engine.classifier_targets == []
    with pytest.raises(InvalidInputError, match="unknown target 'pink object'"):
        tiny_classifier_engine.generate(GenerateSpec(PROMPT, classifier_guidance=ClassifierGuidanceSpec("pink object")))


def test_classifier_guidance_combines_with_cfg_and_reports_its_cost(tiny_classifier_engine):
    guidance = ClassifierGuidanceSpec("blue background", strength=5.0)
    spec = GenerateSpec(PROMPT, seed=4, steps=4, conditions=COMPOSE[:1], classifier_guidance=guidance)
    result = _result(tiny_classifier_engine, spec)
    settings = result.settings

    # The first step is at zero SNR (x_T holds no signal): no gradient there; one per later step.
    assert settings["classifier_gradient_evaluations"] == spec.steps - 1
    assert settings["nfe_per_step"] == 3  # the classifier adds no UNet work
    assert result.unet_evaluations == spec.steps
    assert result.timings["classifier_gradient"] > 0
    assert 0 < settings["classifier_seconds_per_step"] < settings["sampling_seconds_per_step"]
    assert GenerateSpec.from_settings(settings).classifier_guidance == guidance
    # a record from before normalisation (no "normalise") ran, and remakes, eq. 14's raw gradient
    record = {k: v for k, v in settings["classifier_guidance"].items() if k != "normalise"}
    assert GenerateSpec.from_settings({**settings, "classifier_guidance": record}).classifier_guidance.normalise is False
    plain = _result(tiny_classifier_engine, GenerateSpec(PROMPT, seed=4, steps=4, conditions=COMPOSE[:1]))
    assert np.abs(plain.pixels - result.pixels).max() > 1e-4


@pytest.mark.parametrize(("normalise", "strength"), [(True, 4.0), (False, 20.0)], ids=["normalised", "eq14"])
def test_classifier_guidance_raises_log_p_of_the_target_on_the_tiny_model(tiny_classifier_engine, monkeypatch,
                                                                          normalise, strength):
    """Same seed, same steps: the guided run ends where the classifier finds its target likelier."""
    engine = tiny_classifier_engine
    target = classifier_targets()["blue background"]
    latents = {}
    for strength in (0.0, strength):
        guidance = ClassifierGuidanceSpec(target.name, strength=strength, normalise=normalise)
        spec = GenerateSpec(PROMPT, seed=5, steps=3, classifier_guidance=guidance)
        captured = []
        # the last latents the engine decodes are the run's final ones
        monkeypatch.setattr(studio.generation, "decode_latents",
                            lambda vae, x, captured=captured: (captured.append(x), decode_latents(vae, x))[1])
        _result(engine, spec)
        latents[strength] = captured[-1]
    t = torch.tensor([1])
    with torch.no_grad():
        log_p = {s: target_log_prob(engine.model.classifier.network(x, t), target).item() for s, x in latents.items()}
    assert log_p[strength] > log_p[0.0]


def test_a_classifier_of_another_world_plugs_in_by_its_targets_and_log_prob(tiny_engine, monkeypatch):
    """The jobs know a classifier only as studio.classifier.NoisyClassifier: no shapes targets assumed."""
    asked = []

    def log_prob(target):
        asked.append(target)
        return lambda x_t, t: -(x_t.float() ** 2).mean(dim=(1, 2, 3))  # "bright" = latents near zero

    classifier = NoisyClassifier(network=torch.nn.Identity(), targets=("bright",), log_prob=log_prob)
    monkeypatch.setattr(tiny_engine.model, "classifier", classifier)
    assert tiny_engine.classifier_targets == ["bright"]
    with pytest.raises(InvalidInputError, match="unknown target 'red object'; choose one of bright"):
        tiny_engine.generate(GenerateSpec(PROMPT, classifier_guidance=ClassifierGuidanceSpec("red object")))
    spec = GenerateSpec(PROMPT, seed=4, steps=3, classifier_guidance=ClassifierGuidanceSpec("bright", strength=5.0))
    result = _result(tiny_engine, spec)
    assert asked == ["bright"] and result.classifier_gradient_evaluations == spec.steps - 1
