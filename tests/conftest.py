"""Shared fixtures: a tiny random SD-format model saved once per session, and an engine on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Test models are tiny: one intra-op thread is as fast, and on a shared CPU it avoids the
# thread-oversubscription stalls we measured at 10-100x (OMP spin-waits against another job).
torch.set_num_threads(int(os.environ.get("STUDIO_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder holding studio.models.tiny_random_pipeline (native size 128, v-prediction)."""
    from studio.models import tiny_random_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_random_pipeline(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from studio.engine import Engine

    return Engine(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def engine():
    """The embedded shapes model, loaded once for every test that measures with a trained model
    (modules that need another model override this fixture)."""
    from studio.engine import Engine

    return Engine(None, device="cpu")


@pytest.fixture(scope="session")
def tiny_classifier_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model plus a random noisy-latent classifier in `classifier/` (for classifier guidance)."""
    import shutil

    from studio.shapes import classifier as latent_classifier

    folder = tmp_path_factory.mktemp("models") / "tiny-sd-classifier"
    shutil.copytree(tiny_model_dir, folder)
    torch.manual_seed(0)
    latent_classifier.save(latent_classifier.LatentClassifier(channels=16, time_dim=32, dilations=(1, 2)), folder / "classifier")
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_engine(tiny_classifier_model_dir: Path):
    from studio.engine import Engine

    return Engine(str(tiny_classifier_model_dir), device="cpu")
