"""The baselines: the same architecture at random init, raw pixels, and which one a model kind names."""

from __future__ import annotations

import pytest
import torch

from dinolab import config as config_lib
from dinolab.eval import MODEL_KINDS, PixelBaseline, model_of_kind, random_init_like
from dinolab.models.build import build_backbone

DEMO_RECIPES = [name for name in config_lib.available_recipes() if name.endswith("_fmnist")]


@pytest.mark.parametrize("recipe", DEMO_RECIPES)
def test_random_init_draws_the_weights_of_a_backbone_built_from_the_config(recipe: str) -> None:
    """The demo built its baseline with build_backbone(cfg) after seeding: the same seed gives the same bits."""
    cfg = config_lib.load(recipe)
    torch.manual_seed(3)
    reference = build_backbone(cfg, drop_path_rate=0.0)
    trained = build_backbone(cfg)
    fresh = random_init_like(trained, seed=3)
    assert not fresh.training
    assert fresh.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    torch.manual_seed(3)
    assert torch.equal(random_init_like(trained).cls_token, fresh.cls_token)  # no seed: the RNG as it stands


def test_model_of_kind() -> None:
    cfg = config_lib.load("dino_vit_tiny_fmnist")
    trained = build_backbone(cfg, drop_path_rate=0.0)
    assert MODEL_KINDS == ("trained", "random-init", "pixels")
    assert model_of_kind(trained, "trained") is trained
    random_init = model_of_kind(trained, "random-init", seed=1)  # (conftest seeds 0 before every test)
    assert type(random_init) is type(trained) and not torch.equal(random_init.cls_token, trained.cls_token)
    pixels = model_of_kind(trained, "pixels")
    assert isinstance(pixels, PixelBaseline) and pixels.patch_size == cfg.model.patch_size
    with pytest.raises(ValueError, match="model kind must be one of trained, random-init, pixels, got 'imagenet'"):
        model_of_kind(trained, "imagenet")
