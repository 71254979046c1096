"""The hub constructors: official architectures and parameter counts (counted on the meta device, nothing
allocated), the names torch.hub sees through hubconf.py, and DINO's ResNet-50."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import dinolab.hub as hub
from dinolab.hub import MODEL_SPECS
from dinolab.models.layers import SwiGLU
from dinolab.models.vit import VisionTransformer

REPO_ROOT = Path(__file__).resolve().parents[1]

# name: (patch size, depth, heads, width, registers, position-embedding grid side, published parameters)
# Published sizes: DINO / iBOT ViT-S 21M, ViT-B 85M, ViT-L 303M (their READMEs / papers); DINOv2 counted
# with its 37x37 position grid as timm lists them: ViT-S/14 22.1M, B/14 86.6M, L/14 304.4M, g/14 1136.5M.
EXPECTED = {
    "dino_vits16": (16, 12, 6, 384, 0, 14, 21e6),
    "dino_vits8": (8, 12, 6, 384, 0, 28, 21e6),
    "dino_vitb16": (16, 12, 12, 768, 0, 14, 85e6),
    "dino_vitb8": (8, 12, 12, 768, 0, 28, 85e6),
    "ibot_vits16": (16, 12, 6, 384, 0, 14, 21e6),
    "ibot_vitb16": (16, 12, 12, 768, 0, 14, 85e6),
    "ibot_vitl16": (16, 24, 16, 1024, 0, 14, 303e6),
    "dinov2_vits14": (14, 12, 6, 384, 0, 37, 22.1e6),
    "dinov2_vitb14": (14, 12, 12, 768, 0, 37, 86.6e6),
    "dinov2_vitl14": (14, 24, 16, 1024, 0, 37, 304.4e6),
    "dinov2_vitg14": (14, 40, 24, 1536, 0, 37, 1136.5e6),
    "dinov2_vits14_reg": (14, 12, 6, 384, 4, 37, 22.1e6),
    "dinov2_vitb14_reg": (14, 12, 12, 768, 4, 37, 86.6e6),
    "dinov2_vitl14_reg": (14, 24, 16, 1024, 4, 37, 304.4e6),
    "dinov2_vitg14_reg": (14, 40, 24, 1536, 4, 37, 1136.5e6),
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_spec_has_a_named_constructor() -> None:
    assert set(EXPECTED) == set(MODEL_SPECS)
    for name in MODEL_SPECS:
        constructor = getattr(hub, name)
        assert constructor.__name__ == name and name in hub.__all__
        assert name.split("_")[0] in constructor.__doc__


@pytest.mark.parametrize("name", list(EXPECTED))
def test_architecture_and_parameter_count(name: str) -> None:
    patch, depth, heads, width, registers, side, published = EXPECTED[name]
    with torch.device("meta"):
        model = getattr(hub, name)()
    assert model.pos_embed.is_meta
    assert (model.patch_size, len(model.blocks), model.num_heads, model.embed_dim) == (patch, depth, heads, width)
    assert model.num_register_tokens == registers
    assert model.pos_embed.shape == (1, 1 + side * side, width)
    assert model.mask_token.shape == (1, width)
    dinov2 = name.startswith("dinov2")
    gamma = getattr(model.blocks[0].ls1, "gamma", None)
    assert (gamma is not None) is dinov2
    assert isinstance(model.blocks[0].mlp, SwiGLU) is ("vitg" in name)
    if "vitg" in name:  # DINOv2's fused SwiGLU: hidden 2/3 * 4 * 1536 = 4096 (a multiple of 8)
        assert model.blocks[0].mlp.w12.weight.shape == (2 * 4096, 1536)
        assert model.blocks[0].mlp.w3.weight.shape == (1536, 4096)
    expected_resize = (0.0, True) if registers else (0.1, False)
    assert (model.interpolate_offset, model.interpolate_antialias) == expected_resize
    assert count(model) == pytest.approx(published, rel=0.04)


def test_dinov2_layerscale_starts_at_1e_5() -> None:
    model = hub.dinov2_vits14(depth=1, embed_dim=64, num_heads=2, img_size=28)
    assert torch.equal(model.blocks[0].ls1.gamma, torch.full((64,), 1e-5))


def test_kwargs_override_the_architecture() -> None:
    model = hub.dino_vits16(depth=2, img_size=32, drop_path_rate=0.1)
    assert len(model.blocks) == 2 and model.pos_embed.shape == (1, 5, 384)
    assert not model.training
    with pytest.raises(ValueError, match="unknown model 'dinov3_vits16'"):
        hub.build("dinov3_vits16")


def test_resnet50_backbone() -> None:
    model = hub.dino_resnet50()
    assert isinstance(model.fc, nn.Identity)
    assert count(model) == pytest.approx(23.5e6, rel=0.01)  # ResNet-50 without its 2.05M classifier
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_torch_hub_load_local() -> None:
    model = torch.hub.load(str(REPO_ROOT), "dinov2_vits14", source="local", weights=None, depth=2)
    assert isinstance(model, VisionTransformer)
    assert model.patch_size == 14 and len(model.blocks) == 2 and model.pos_embed.shape[1] == 1 + 37 * 37
    hubconf = runpy.run_path(str(REPO_ROOT / "hubconf.py"))
    entry_points = {name for name, obj in hubconf.items() if callable(obj) and not name.startswith("_")}
    assert entry_points == set(MODEL_SPECS) | {"dino_resnet50"}
