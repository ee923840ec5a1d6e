"""Protects the guidance maths (issue #4): multi-condition CFG with signed weights, guidance rescale,
per-condition schedules and windows, classifier guidance -- hand-computed values, and the same
result whatever the model predicts (eps, v or x0)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from studio import schedule
from studio.conditioning import Cond
from studio.guidance import (
    NORMALISED_STEP,
    ClassifierGuidance,
    MultiConditionGuidance,
    cfg,
    classifier_gradient,
    classifier_guided_eps,
    multi_condition_cfg,
    normalised_classifier_eps,
    schedule_factors,
)
from studio.shapes.classifier import (
    LatentClassifier,
    classifier_targets,
    target_log_prob,
    target_log_prob_fn,
    target_region_fn,
)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _tensor(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_multi_condition_cfg_adds_positive_and_subtracts_negative_conditions():
    uncond = _tensor(1.0, 2.0)
    positive, negative = _tensor(3.0, 2.0), _tensor(1.0, 5.0)
    # eps_u + 2 (eps_p - eps_u) - 1 (eps_n - eps_u) = [1, 2] + 2 [2, 0] - [0, 3]
    guided = multi_condition_cfg(uncond, [positive, negative], [2.0, -1.0])
    assert torch.equal(guided, _tensor(5.0, -1.0))


def test_one_condition_is_cfg_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 1, 4, 8, 8, generator=generator)
    assert torch.equal(multi_condition_cfg(uncond, [cond], [7.5]), cfg(uncond, cond, 7.5))


def test_guidance_rescale_matches_the_standard_deviation_of_the_positive_prediction():
    """diffusers' rescale_noise_cfg, which the multi-condition guider applies to the x0 estimates."""
    positive = _tensor(0.0, 2.0).reshape(1, 2)  # std sqrt(2)
    guided = _tensor(0.0, 4.0).reshape(1, 2)  # std 2 sqrt(2): factor 1/2
    assert torch.allclose(rescale_noise_cfg(guided, positive, 1.0), _tensor(0.0, 2.0).reshape(1, 2))
    assert torch.allclose(rescale_noise_cfg(guided, positive, 0.5), _tensor(0.0, 3.0).reshape(1, 2))
    assert torch.equal(rescale_noise_cfg(guided, positive, 0.0), guided)


def test_schedules_windows_and_ramps():
    flat = torch.full((5,), 0.5, dtype=torch.float64)
    assert schedule_factors("constant", 0.5, 0.0, 1.0, flat).tolist() == [1, 1, 1, 1, 1]
    assert schedule_factors("constant", 0.5, 0.25, 0.75, flat).tolist() == [0, 1, 1, 1, 0]
    assert schedule_factors("ramp_up", 0.5, 0.0, 1.0, flat).tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert schedule_factors("ramp_down", 0.5, 0.0, 1.0, flat).tolist() == [1, 0.75, 0.5, 0.25, 0]
    assert schedule_factors("ramp_up", 0.5, 0.5, 1.0, flat).tolist() == [0, 0, 0, 0.5, 1]


def test_snr_and_sigma_schedules_weaken_guidance_at_high_noise():
    alpha_bars = _tensor(0.0, 0.5, 0.8)  # SNR 0, 1, 4; sigma inf, 1, 1/2
    assert schedule_factors("snr", 1.0, 0.0, 1.0, alpha_bars).tolist() == pytest.approx([0, 1, 4])
    assert schedule_factors("snr", 0.5, 0.0, 1.0, alpha_bars).tolist() == pytest.approx([0, 1, 2])
    assert schedule_factors("sigma", 2.0, 0.0, 1.0, alpha_bars).tolist() == pytest.approx([0, 1, 4])
    assert schedule_factors("snr", 0.0, 0.0, 1.0, alpha_bars).tolist() == [1, 1, 1]  # exponent 0 = constant


def test_classifier_guidance_shifts_the_noise_along_the_gradient():
    # eps_hat = eps - sqrt(1 - ab) s grad: sqrt(1 - 0.75) = 0.5
    shifted = classifier_guided_eps(_tensor(1.0, 1.0), _tensor(1.0, -2.0), 0.75, 4.0)
    assert torch.allclose(shifted, _tensor(-1.0, 5.0))


def test_normalised_classifier_guidance_steps_a_share_of_eps_along_the_gradient_per_image():
    eps = torch.tensor([[3.0, 4.0], [0.6, 0.8]])  # norms 5 and 1
    gradient = torch.tensor([[0.0, -2.0], [300.0, 0.0]])  # sizes 2 and 300: only the direction counts
    shifted = normalised_classifier_eps(eps, gradient, 2.0)
    step = 2.0 * NORMALISED_STEP
    assert torch.allclose(shifted, torch.tensor([[3.0, 4.0 + 5 * step], [0.6 - step, 0.8]]))
    assert torch.equal(normalised_classifier_eps(eps, torch.zeros_like(eps), 2.0), eps)  # certain classifier: no push


# --------------------------------------------------------------------------------------------
# The same rule for eps-, v- and x0-prediction models


def _alphas_cumprod() -> torch.Tensor:
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    return scheduler.alphas_cumprod.double()


def _cond() -> Cond:
    return Cond(embeddings=torch.zeros(1, 1, 1), tokens=None)  # the guiders never look inside


def _tiny_classifier(seed: int = 0) -> LatentClassifier:
    torch.manual_seed(seed)
    return LatentClassifier(channels=16, time_dim=32, dilations=(1, 2)).eval().requires_grad_(False)


@pytest.mark.parametrize(("with_classifier", "normalise"), [(False, False), (True, False), (True, True)],
                         ids=["cfg-rescale", "cfg-rescale-classifier", "cfg-rescale-normalised-classifier"])
def test_guidance_gives_the_same_result_for_eps_v_and_x0_predictions(with_classifier, normalise):
    alphas_cumprod = _alphas_cumprod()
    timesteps = torch.tensor([700, 400, 100])
    t = timesteps[1]
    alpha_bar = alphas_cumprod[t]
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps_predictions = list(torch.randn(4, 2, 4, 8, 8, generator=generator, dtype=torch.float64))  # uncond + 3 conds
    weights = torch.tensor([[5.0, 2.0, -1.5]] * 3, dtype=torch.float64)
    classifier = _tiny_classifier()

    results, guiders = {}, {}
    for prediction_type in PREDICTION_TYPES:
        as_model = [schedule.from_eps(e, x_t, alpha_bar, prediction_type) for e in eps_predictions]
        guider = MultiConditionGuidance(
            uncond=_cond(), conditions=[_cond()] * 3, weights=weights,
            alphas_cumprod=alphas_cumprod, prediction_type=prediction_type, rescale=0.7,
        )
        if with_classifier:
            guider = ClassifierGuidance(
                inner=guider, log_prob=target_log_prob_fn(classifier, classifier_targets()["red object"]),
                strengths=torch.full((3,), 3.0), alphas_cumprod=alphas_cumprod,
                prediction_type=prediction_type, normalise=normalise,
            )
        guided = guider.combine(as_model, 1, t, x_t)
        guiders[prediction_type] = guider
        results[prediction_type] = schedule.to_eps(guided, x_t, alpha_bar, prediction_type)

    assert not torch.allclose(results["epsilon"], eps_predictions[0])  # guidance did something
    if normalise:  # eps of the guided CFG, moved by the normalised rule along the classifier's gradient
        guider = guiders["epsilon"]
        gradient = classifier_gradient(guider.log_prob, x_t, t)
        torch.testing.assert_close(results["epsilon"], normalised_classifier_eps(
            guider.inner.combine(eps_predictions, 1, t, x_t), gradient, 3.0), rtol=1e-6, atol=1e-6)
    for prediction_type in ("v_prediction", "sample"):
        torch.testing.assert_close(results[prediction_type], results["epsilon"], rtol=1e-6, atol=1e-6)


def test_rescale_is_applied_to_the_clean_image_estimate():
    alphas_cumprod = _alphas_cumprod()
    timesteps = torch.tensor([500])
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64)
    uncond, cond = torch.randn(2, 1, 4, 8, 8, generator=generator, dtype=torch.float64)
    guider = MultiConditionGuidance(
        uncond=_cond(), conditions=[_cond()], weights=torch.tensor([[6.0]]),
        alphas_cumprod=alphas_cumprod, prediction_type="epsilon", rescale=1.0,
    )
    guided_x0 = schedule.x0_from_eps(guider.combine([uncond, cond], 0, timesteps[0], x_t), x_t, alphas_cumprod[500])
    cond_x0 = schedule.x0_from_eps(cond, x_t, alphas_cumprod[500])
    assert guided_x0.std().item() == pytest.approx(cond_x0.std().item(), rel=1e-9)


def test_the_guider_reads_the_weight_row_of_the_current_step():
    timesteps = torch.tensor([999, 500, 1])
    weights = torch.tensor([[0.0], [2.0], [4.0]])
    guider = MultiConditionGuidance(
        uncond=_cond(), conditions=[_cond()], weights=weights,
        alphas_cumprod=_alphas_cumprod(), prediction_type="epsilon",
    )
    uncond, cond = _tensor(0.0), _tensor(1.0)
    assert [guider.combine([uncond, cond], i, t, uncond).item() for i, t in enumerate(timesteps)] == [0.0, 2.0, 4.0]
    assert guider.conds_at(0)[guider.primary] is guider.conditions[0]


# --------------------------------------------------------------------------------------------
# Classifier guidance


@pytest.mark.parametrize("target", ["red object", "circle object", "blue background"])
def test_a_step_along_the_classifier_gradient_raises_log_p_of_the_target(target):
    classifier = _tiny_classifier()
    chosen = classifier_targets()[target]
    x_t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([400])
    gradient = classifier_gradient(target_log_prob_fn(classifier, chosen), x_t, t)
    with torch.no_grad():
        before = target_log_prob(classifier(x_t, t), chosen)
        after = target_log_prob(classifier(x_t + 1e-2 * gradient / gradient.abs().max(), t), chosen)
    assert gradient.shape == x_t.shape and not x_t.requires_grad
    assert (after > before).all()


def test_object_log_prob_weights_cells_by_objectness():
    # Two cells: one surely background (none), one surely object with p(red | object) = 1/2.
    logits = torch.full((1, 9, 1, 2), -30.0)
    logits[0, 0, 0, 0] = 30.0  # cell 0: none
    logits[0, 1, 0, 1] = logits[0, 2, 0, 1] = 30.0  # cell 1: red or orange, equally
    log_p = target_log_prob({"cell_colour": logits}, classifier_targets()["red object"])
    assert log_p.item() == pytest.approx(torch.log(torch.tensor(0.5)).item(), abs=1e-4)


@pytest.mark.parametrize("normalise", [True, False], ids=["normalised", "eq14"])
def test_the_normalised_guidance_moves_only_where_the_targets_region_lies(normalise):
    alphas_cumprod, t = _alphas_cumprod(), torch.tensor(400)
    generator = torch.Generator().manual_seed(5)
    x_t = torch.randn(1, 4, 16, 16, generator=generator, dtype=torch.float64)
    eps = torch.randn(1, 4, 16, 16, generator=generator, dtype=torch.float64)
    right_half = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    right_half[..., 8:] = 1
    guider = ClassifierGuidance(
        inner=MultiConditionGuidance(uncond=_cond(), conditions=[_cond()], weights=torch.ones(1, 1, dtype=torch.float64),
                                     alphas_cumprod=alphas_cumprod, prediction_type="epsilon"),
        log_prob=lambda x, t: (x ** 2).sum(dim=(1, 2, 3)), strengths=torch.full((1,), 2.0),
        alphas_cumprod=alphas_cumprod, prediction_type="epsilon", normalise=normalise,
        region=lambda x, t: right_half)
    moved = (guider.combine([eps, eps], 0, t, x_t) - eps).abs().amax(dim=(0, 1, 2))  # (w,) per column
    assert (moved[8:] > 0).all()
    assert bool((moved[:8] == 0).all()) is normalise  # eq. 14 stays as published: the region is not applied


def test_a_background_targets_region_is_where_the_classifier_sees_background_and_an_objects_is_everywhere():
    classifier = _tiny_classifier()
    x_t, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([400])
    region = target_region_fn(classifier, classifier_targets()["blue background"])(x_t, t)
    with torch.no_grad():
        assert torch.equal(region, classifier(x_t, t)["cell_colour"].softmax(dim=1)[:, :1])  # p(none) per cell
    assert target_region_fn(classifier, classifier_targets()["red object"]) is None


def test_targets_name_every_colour_shape_and_background():
    names = classifier_targets()
    assert {"red object", "circle object", "triangle object", "blue background"} <= set(names)
    assert "none object" not in names and len(names) == 8 + 3 + 8


def test_classifier_guidance_takes_any_log_probability_function():
    """Another model's classifier plugs in as log_prob(x_t, t): here log p = -||x_t - c||^2, whose gradient is
    -2 (x_t - c), exactly."""
    centre = torch.full((1, 4, 8, 8), 0.5, dtype=torch.float64)
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gradient = classifier_gradient(lambda x, t: -((x - centre) ** 2).sum(dim=(1, 2, 3)), x_t, torch.tensor(500))
    torch.testing.assert_close(gradient, -2 * (x_t - centre), rtol=1e-6, atol=1e-6)
