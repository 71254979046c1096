"""Parity with independent implementations of the same networks: randomly initialized HF transformers
Dinov2Model / Dinov2WithRegistersModel and timm DINOv2 / DINO ViTs, converted into dinolab and back,
give the same tokens (max abs diff <= 1e-4, fp32) at the native size and at sizes that need the position
embedding interpolated. Small configs (64 wide, 2 blocks): the code path is the one of the full models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolab.hub import from_dinolab, infer_vit_kwargs, to_dinolab
from dinolab.models.vit import VisionTransformer

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = 1e-4
WIDTH, DEPTH, HEADS = 64, 2, 2


def perturb(model: nn.Module) -> nn.Module:
    """Move every parameter off its structured init (LayerScale 1, LayerNorm 1/0, zero tokens) so that a
    wrong mapping of any tensor shows in the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def dinolab_twin(state: dict[str, torch.Tensor]) -> VisionTransformer:
    """A dinolab ViT built from the converted state dict's shapes, with that state loaded strictly."""
    converted = to_dinolab(state)
    model = VisionTransformer(**infer_vit_kwargs(converted.state, converted.layout, num_heads=HEADS))
    model.load_state_dict(converted.state)
    return model.eval()


def dinolab_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x)
    return torch.cat((out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]), dim=1)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# 56 px is the native 4x4 grid of 14 px patches; the others need the position embedding resized
SIZES_14 = [(56, 56), (28, 42), (84, 70), (98, 98)]


def hf_model(registers: int, swiglu: bool = False) -> nn.Module:
    common = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, image_size=56, patch_size=14,
                  use_swiglu_ffn=swiglu)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        return perturb(transformers.Dinov2WithRegistersModel(cfg))
    return perturb(transformers.Dinov2Model(transformers.Dinov2Config(**common)))


@pytest.mark.parametrize(("registers", "swiglu"), [(0, False), (0, True), (4, False)])
@torch.no_grad()
def test_hf_dinov2_parity_both_ways(registers: int, swiglu: bool) -> None:
    reference = hf_model(registers, swiglu)
    ours = dinolab_twin(reference.state_dict())
    assert ours.num_register_tokens == registers
    assert (ours.blocks[0].mlp.__class__.__name__ == "SwiGLU") is swiglu
    back = hf_model(registers, swiglu)
    back.load_state_dict(from_dinolab(ours.state_dict(), "hf"))  # strict: every HF key, nothing else
    for h, w in SIZES_14:
        x = torch.randn(2, 3, h, w)
        expected = reference(pixel_values=x).last_hidden_state
        assert max_diff(dinolab_tokens(ours, x), expected) <= TOL, (h, w)
        assert max_diff(back(pixel_values=x).last_hidden_state, expected) <= TOL, (h, w)


def timm_model(name: str, img_size: int) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=0, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                              img_size=img_size, dynamic_img_size=True)
    return perturb(model)


@pytest.mark.parametrize(
    ("name", "img_size", "sizes"),
    [
        ("vit_small_patch14_dinov2", 56, SIZES_14),
        ("vit_small_patch14_reg4_dinov2", 56, SIZES_14),
        ("vit_small_patch16_224", 64, [(64, 64), (32, 48), (96, 80)]),  # DINO's ViT layout
    ],
)
@torch.no_grad()
def test_timm_parity_both_ways(name: str, img_size: int, sizes: list[tuple[int, int]]) -> None:
    reference = timm_model(name, img_size)
    converted = to_dinolab(reference.state_dict())
    # timm resizes position embeddings to the target size with antialiasing, whatever the family
    timm_resize = {"interpolate_offset": 0.0, "interpolate_antialias": True}
    ours = VisionTransformer(**{**infer_vit_kwargs(converted.state, num_heads=HEADS), **timm_resize}).eval()
    ours.load_state_dict({**converted.state, "mask_token": ours.mask_token})
    back = timm_model(name, img_size)
    back.load_state_dict(from_dinolab(ours.state_dict(), "timm"))
    for h, w in sizes:
        x = torch.randn(2, 3, h, w)
        expected = reference.forward_features(x)
        assert max_diff(dinolab_tokens(ours, x), expected) <= TOL, (h, w)
        assert max_diff(back.forward_features(x), expected) <= TOL, (h, w)


def test_hf_layout_keys_of_transformers_4() -> None:
    """The files on the HF hub use transformers 4.x names (attention.attention.query, weights_in)."""
    reference = hf_model(0, swiglu=True)
    renames = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
    old = {}
    for key, value in reference.state_dict().items():
        for new_name, old_name in renames.items():
            key = key.replace(new_name, old_name)
        old[key] = value
    for i in range(DEPTH):  # 4.x SwiGLU: gate and up stacked in one weights_in, like DINOv2's w12
        for kind in ("weight", "bias"):
            mlp = f"encoder.layer.{i}.mlp."
            gate, up = old.pop(f"{mlp}gate_proj.{kind}"), old.pop(f"{mlp}up_proj.{kind}")
            old[f"{mlp}weights_in.{kind}"] = torch.cat((gate, up))
            old[f"{mlp}weights_out.{kind}"] = old.pop(f"{mlp}down_proj.{kind}")
    ours = dinolab_twin(old)
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        assert max_diff(dinolab_tokens(ours, x), reference(pixel_values=x).last_hidden_state) <= TOL


@torch.no_grad()
def test_the_interpolation_mode_matters() -> None:
    """The parity above is not loose: DINO's resize (offset 0.1) instead of HF's misses by far more than 1e-4."""
    reference = hf_model(0)
    converted = to_dinolab(reference.state_dict())
    wrong = VisionTransformer(**{**infer_vit_kwargs(converted.state, "hf", num_heads=HEADS), "interpolate_offset": 0.1})
    wrong.load_state_dict(converted.state)
    x = torch.randn(2, 3, 84, 70)
    assert max_diff(dinolab_tokens(wrong.eval(), x), reference(pixel_values=x).last_hidden_state) > 1e-2


@pytest.mark.parametrize("size", [(4, 4), (6, 3), (1, 5), (9, 9)])
def test_dino_resize_equals_the_official_interpolate_call(size: tuple[int, int]) -> None:
    """DINO / iBOT / DINOv2: F.interpolate(scale_factor=((g + 0.1) / side, ...), mode='bicubic'), and the
    learned grid itself at its own size (4 x 4 here)."""
    model = VisionTransformer(img_size=64, patch_size=16, embed_dim=WIDTH, depth=1, num_heads=HEADS,
                              interpolate_offset=0.1)
    grid = model.pos_embed[:, 1:].reshape(1, 4, 4, WIDTH).permute(0, 3, 1, 2)
    if size == (4, 4):
        expected = grid
    else:
        scale = ((size[0] + 0.1) / 4, (size[1] + 0.1) / 4)
        expected = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic")
    pos = model.interpolate_pos_encoding(16 * size[0], 16 * size[1])
    assert torch.equal(pos[:, :1], model.pos_embed[:, :1])
    expected = expected.permute(0, 2, 3, 1).reshape(1, -1, WIDTH)
    assert max_diff(pos[:, 1:], expected) <= 1e-6
