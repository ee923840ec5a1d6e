"""Protects the embedded model's training recipe (studio.shapes.train): the EMA keeps its decay schedule, and a
stage interrupted and re-run ends exactly where an uninterrupted run does (weights, EMA, optimiser, RNGs),
from a checkpoint read with `weights_only=True`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.shapes.train import make_ema, train_loop


def test_ema_decay_warms_up_as_the_recipe_did():
    ema = make_ema([torch.nn.Parameter(torch.zeros(1))], decay=0.999)
    for update in range(1, 5000):  # the recipe's warm-up: min(decay, (1 + k) / (10 + k)) at the k-th update
        assert ema.get_decay(update) == min(0.999, (1 + update) / (10 + update))


class Interrupted(Exception):
    pass


def run_stage(work, interrupt_at: int | None = None):
    """A tiny stage: a linear model fitted to targets drawn from both RNGs, with an EMA of its weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    params = list(model.parameters())
    ema = make_ema(params, decay=0.9)
    calls = 0

    def loss_fn(rng: np.random.Generator):
        nonlocal calls
        calls += 1
        if calls == interrupt_at:
            raise Interrupted
        x = torch.from_numpy(rng.standard_normal((8, 4))).float()
        return (model(x) - torch.randn(8, 2)).pow(2).mean(), {}

    train_loop("stage", work, 9, {"model": model, "ema": ema}, optimizer, 1e-2, 2, loss_fn, seed=5,
               checkpoint_every=3, after_step=lambda: ema.step(params))
    return model, ema


def test_an_interrupted_stage_resumes_to_the_same_weights_and_ema(tmp_path):
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    model, ema = run_stage(tmp_path / "once")
    with pytest.raises(Interrupted):
        run_stage(tmp_path / "twice", interrupt_at=6)  # after the checkpoint of step 3
    resumed_model, resumed_ema = run_stage(tmp_path / "twice")
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name
    assert resumed_ema.optimization_step == ema.optimization_step == 9
    for shadow, resumed_shadow in zip(ema.shadow_params, resumed_ema.shadow_params):
        assert torch.equal(shadow, resumed_shadow)
    torch.load(tmp_path / "twice" / "stage.ckpt", weights_only=True)  # no pickled objects in the checkpoint
