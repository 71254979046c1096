"""Models: ViT token outputs, position-embedding interpolation, intermediate layers, attention maps,
masking, architecture sizes, LayerScale / SwiGLU, the DINO head's weight norm, the multi-crop wrapper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import small_vit
from torch import nn

from dinolab.models import ARCH_SIZES, DINOHead, MultiCropWrapper, VisionTransformer, vit
from dinolab.models.heads import WeightNormLinear
from dinolab.models.layers import Attention, Block, ChannelsLastConv2d, DropPath, LayerScale, PatchEmbed, SwiGLU

D = 32  # small_vit's embed_dim


def randomize(model: nn.Module) -> nn.Module:
    """Zero-initialized tokens (pos_embed is random, but mask/register tokens start at 0) made random, so
    tests can tell them apart."""
    with torch.no_grad():
        model.mask_token.normal_()
        if model.register_tokens is not None:
            model.register_tokens.normal_()
    return model.eval()


@pytest.mark.parametrize("registers", [0, 3])
def test_forward_features_keys_and_shapes(registers: int) -> None:
    model = randomize(small_vit(num_register_tokens=registers))
    x = torch.randn(2, 1, 28, 28)
    out = model.forward_features(x)
    assert set(out) == {"x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks"}
    assert out["x_norm_clstoken"].shape == (2, D)
    assert out["x_norm_regtokens"].shape == (2, registers, D)
    assert out["x_norm_patchtokens"].shape == (2, 16, D)
    assert out["x_prenorm"].shape == (2, 1 + registers + 16, D)
    assert out["masks"] is None
    # the normalized tokens are the final LayerNorm of the pre-norm tokens, in order [CLS], registers, patches
    normed = model.norm(out["x_prenorm"])
    torch.testing.assert_close(out["x_norm_clstoken"], normed[:, 0])
    torch.testing.assert_close(out["x_norm_regtokens"], normed[:, 1 : 1 + registers])
    torch.testing.assert_close(out["x_norm_patchtokens"], normed[:, 1 + registers :])
    torch.testing.assert_close(model(x), out["x_norm_clstoken"])


def test_register_tokens_change_the_output() -> None:
    torch.manual_seed(1)
    with_regs = randomize(small_vit(num_register_tokens=2))
    without = small_vit(num_register_tokens=0).eval()
    state = {k: v for k, v in with_regs.state_dict().items() if k != "register_tokens"}
    without.load_state_dict(state)
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(with_regs(x), without(x), atol=1e-4)


def test_position_embedding_is_the_learned_one_at_native_size() -> None:
    model = small_vit()
    pos = model.interpolate_pos_encoding(28, 28)
    assert pos.shape == (1, 17, D)
    assert torch.equal(pos, model.pos_embed)


@pytest.mark.parametrize(("h", "w"), [(14, 14), (56, 56), (28, 14), (21, 35), (7, 28)])
def test_position_embedding_interpolates_to_other_sizes(h: int, w: int) -> None:
    model = small_vit()
    gh, gw = h // 7, w // 7
    pos = model.interpolate_pos_encoding(h, w)
    assert pos.shape == (1, 1 + gh * gw, D)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0])  # [CLS] position is never resized
    # a spatially constant grid stays constant under bicubic interpolation
    with torch.no_grad():
        model.pos_embed[:, 1:] = torch.linspace(-1, 1, D)
    pos = model.interpolate_pos_encoding(h, w)
    torch.testing.assert_close(pos[:, 1:], torch.linspace(-1, 1, D).expand(1, gh * gw, D), atol=1e-5, rtol=0)


def test_position_embedding_interpolation_keeps_the_layout() -> None:
    """A left-to-right ramp in the learned 4x4 grid is still a left-to-right ramp on an 8x4 (H x W) grid."""
    model = small_vit()
    ramp = torch.arange(4.0).view(1, 4).expand(4, 4)  # value = column index
    with torch.no_grad():
        model.pos_embed[0, 1:] = ramp.reshape(16, 1).expand(16, D)
    pos = model.interpolate_pos_encoding(56, 28)[0, 1:, 0].reshape(8, 4)
    assert torch.allclose(pos, pos[:1].expand(8, 4), atol=1e-5)  # constant down each column
    assert (pos[0].diff() > 0).all()  # increasing along a row


@pytest.mark.parametrize(("h", "w"), [(14, 14), (28, 14), (35, 21)])
def test_forward_on_other_input_sizes(h: int, w: int) -> None:
    model = small_vit(num_register_tokens=1).eval()
    out = model.forward_features(torch.randn(3, 1, h, w))
    assert out["x_norm_patchtokens"].shape == (3, (h // 7) * (w // 7), D)
    assert torch.isfinite(out["x_prenorm"]).all()


def test_input_size_not_divisible_by_patch_size() -> None:
    with pytest.raises(ValueError, match="not divisible by the patch size 7"):
        small_vit()(torch.randn(1, 1, 30, 28))


def test_wrong_number_of_channels() -> None:
    with pytest.raises(ValueError, match="1-channel"):
        small_vit()(torch.randn(1, 3, 28, 28))


def test_embed_dim_must_divide_by_heads() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Attention(30, 4)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="vit_tiny"):
        vit("vit_enormous")


@pytest.mark.parametrize("registers", [0, 2])
def test_get_intermediate_layers(registers: int) -> None:
    model = randomize(small_vit(depth=3, num_register_tokens=registers))
    x = torch.randn(2, 1, 28, 28)
    full = model.forward_features(x)

    (last,) = model.get_intermediate_layers(x, n=1)
    torch.testing.assert_close(last, full["x_norm_patchtokens"])

    two = model.get_intermediate_layers(x, n=2)
    assert len(two) == 2 and all(t.shape == (2, 16, D) for t in two)
    torch.testing.assert_close(two[1], last)
    assert not torch.allclose(two[0], two[1])

    by_index = model.get_intermediate_layers(x, n=[0, 2])
    assert len(by_index) == 2
    torch.testing.assert_close(by_index[1], last)
    (first,) = model.get_intermediate_layers(x, n=[0])
    torch.testing.assert_close(by_index[0], first)

    (grid,) = model.get_intermediate_layers(x, n=1, reshape=True)
    assert grid.shape == (2, D, 4, 4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), last)  # row-major patch order

    ((patches, cls),) = model.get_intermediate_layers(x, n=1, return_class_token=True)
    torch.testing.assert_close(patches, last)
    torch.testing.assert_close(cls, full["x_norm_clstoken"])

    (raw,) = model.get_intermediate_layers(x, n=1, norm=False)
    torch.testing.assert_close(raw, full["x_prenorm"][:, 1 + registers :])


def test_get_intermediate_layers_out_of_range() -> None:
    model = small_vit(depth=2)
    with pytest.raises(ValueError, match="2-block"):
        model.get_intermediate_layers(torch.randn(1, 1, 28, 28), n=[5])


@pytest.mark.parametrize(("registers", "h", "w"), [(0, 28, 28), (2, 28, 28), (0, 14, 21)])
def test_last_selfattention_shape_and_rows(registers: int, h: int, w: int) -> None:
    model = randomize(small_vit(num_register_tokens=registers))
    attn = model.get_last_selfattention(torch.randn(3, 1, h, w))
    n = 1 + registers + (h // 7) * (w // 7)
    assert attn.shape == (3, 2, n, n)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, n))


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_attention_weights_path_equals_sdpa_path(ffn: str) -> None:
    block = Block(D, num_heads=4, ffn=ffn, layerscale_init=0.5).eval()
    x = torch.randn(2, 10, D)
    out_sdpa = block(x)
    out_explicit, attn = block.forward_with_attention(x)
    torch.testing.assert_close(out_explicit, out_sdpa, atol=1e-5, rtol=1e-5)
    assert attn.shape == (2, 4, 10, 10)


def test_attention_weights_are_the_scaled_dot_product() -> None:
    attn_layer = Attention(D, num_heads=2).eval()
    x = torch.randn(1, 5, D)
    _, weights = attn_layer(x, return_attention=True)
    q, k, _ = attn_layer.qkv(x).reshape(1, 5, 3, 2, D // 2).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-2, -1) / (D // 2) ** 0.5, dim=-1)
    torch.testing.assert_close(weights, expected)


def test_masked_patches_are_replaced_by_the_mask_token() -> None:
    model = randomize(small_vit(num_register_tokens=1))
    x = torch.randn(2, 1, 28, 28)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [0, 5, 15]] = True
    masks[1, 3] = True
    tokens = model.prepare_tokens(x, masks)
    pos = model.pos_embed[0, 1:]
    patch_tokens = tokens[:, 2:]  # [CLS], 1 register, then patches
    torch.testing.assert_close(patch_tokens[masks], (model.mask_token + pos)[masks.nonzero()[:, 1]])

    out = model.forward_features(x, masks)
    assert out["masks"] is masks
    # change the pixels of exactly the masked patches: no effect on any output
    x2 = x.clone()
    patches = x2.view(2, 1, 4, 7, 4, 7)  # (B, C, gh, ph, gw, pw) view of x2
    for b, idx in masks.nonzero().tolist():
        patches[b, :, idx // 4, :, idx % 4, :] = torch.randn(1, 7, 7) * 10
    assert not torch.equal(x, x2)
    out2 = model.forward_features(x2, masks)
    torch.testing.assert_close(out2["x_prenorm"], out["x_prenorm"])
    # without the mask the change is visible
    assert not torch.allclose(model.forward_features(x2)["x_prenorm"], model.forward_features(x)["x_prenorm"])


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vit_on_meta(monkeypatch: pytest.MonkeyPatch, arch: str, **kwargs) -> VisionTransformer:
    """Build on the meta device (no allocation), working around the drop-path `linspace(...).tolist()`
    in VisionTransformer.__init__, which cannot run on meta (see test_vit_builds_on_the_meta_device)."""
    with torch.device("meta"):
        torch.empty(0)  # fill torch's cached table of factory functions with the real linspace first
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):
        return vit(arch, **kwargs)


# Published sizes: ViT-Ti 5.7M (DeiT, counting its 0.2M classifier; the backbone is 5.5M), ViT-S 22M,
# ViT-B 86M, ViT-L 304M, DINOv2's ViT-g/14 1.1B (1.14B). Within 4%.
@pytest.mark.parametrize(
    ("arch", "kwargs", "published"),
    [
        ("vit_tiny", {}, 5.7e6),
        ("vit_small", {}, 22e6),
        ("vit_base", {}, 86e6),
        ("vit_large", {}, 304e6),
        ("vit_giant", {"ffn": "swiglu", "patch_size": 14, "img_size": 518}, 1.1e9),  # DINOv2 ViT-g/14
    ],
)
def test_parameter_counts_match_the_published_sizes(
    monkeypatch: pytest.MonkeyPatch, arch: str, kwargs: dict, published: float
) -> None:
    model = vit_on_meta(monkeypatch, arch, **kwargs)
    assert model.pos_embed.is_meta
    assert count(model) == pytest.approx(published, rel=0.04)
    assert model.embed_dim == ARCH_SIZES[arch]["embed_dim"]
    assert len(model.blocks) == ARCH_SIZES[arch]["depth"]


def test_tiny_parameter_count_on_cpu() -> None:
    """The same count for a model really allocated, so the meta work-around cannot hide anything."""
    assert count(vit("vit_tiny")) == pytest.approx(5.7e6, rel=0.04)


def test_vit_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = vit("vit_large")
    assert count(model) == pytest.approx(304e6, rel=0.03)


def test_depth_override() -> None:
    model = vit("vit_tiny", depth=3, img_size=28, patch_size=7, in_chans=1)
    assert len(model.blocks) == 3


def test_layerscale_builds_runs_and_scales_the_branches() -> None:
    model = small_vit(layerscale_init=1e-6).eval()
    gammas = [m.gamma for m in model.modules() if isinstance(m, LayerScale)]
    assert len(gammas) == 2 * 2  # two per block
    assert all(torch.allclose(g, torch.full((D,), 1e-6)) for g in gammas)
    assert "blocks.0.ls1.gamma" in model.state_dict()
    # with a tiny scale every residual branch is ~0, so each block is ~ the identity
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(model.blocks[0](x), x, atol=1e-4, rtol=0)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, D)

    plain = small_vit().eval()
    assert not any(isinstance(m, LayerScale) for m in plain.modules())


def test_swiglu_builds_and_runs() -> None:
    ffn = SwiGLU(D, 4 * D)
    hidden = (int(4 * D * 2 / 3) + 7) // 8 * 8
    assert hidden % 8 == 0
    assert ffn.w12.weight.shape == (2 * hidden, D)
    assert ffn.w3.weight.shape == (D, hidden)
    x = torch.randn(3, D)
    x1, x2 = ffn.w12(x).chunk(2, dim=-1)
    torch.testing.assert_close(ffn(x), ffn.w3(F.silu(x1) * x2))

    model = small_vit(ffn="swiglu", layerscale_init=1e-5).eval()
    assert isinstance(model.blocks[0].mlp, SwiGLU)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, D) and torch.isfinite(out).all()


def test_drop_path() -> None:
    layer = DropPath(0.5)
    x = torch.ones(1000, 3)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    rows = set(y[:, 0].tolist())
    assert rows <= {0.0, 2.0}  # dropped, or kept and rescaled by 1 / keep
    assert (y == y[:, :1]).all()  # whole samples, not elements
    assert 0.4 < (y[:, 0] == 0).float().mean() < 0.6


def test_patch_embed_shape() -> None:
    embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8)
    assert embed(torch.randn(2, 3, 8, 12)).shape == (2, 6, 8)


def test_conv_stem_runs_at_full_resolution_before_the_patch_projection() -> None:
    embed = PatchEmbed(patch_size=7, in_chans=1, embed_dim=8, stem_widths=(4, 6))
    convs = [m for m in embed.stem if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(1, 4, (1, 1)), (4, 6, (1, 1))]
    assert embed.proj.in_channels == 6
    x = torch.randn(2, 1, 28, 14)
    assert embed(x).shape == (2, 8, 8)
    expected = embed.proj(embed.stem(x)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x), expected)
    model = small_vit(conv_stem=(4, 6))
    assert model.forward_features(torch.randn(2, 1, 28, 28))["x_norm_clstoken"].shape == (2, 32)


def test_channels_last_convolution_equals_a_plain_one_and_keeps_ordinary_parameters() -> None:
    """The stem computes in channels-last layout for speed only: same outputs and gradients as nn.Conv2d, and
    parameters that stay contiguous (safetensors refuses strided tensors)."""
    torch.manual_seed(0)
    fast = ChannelsLastConv2d(3, 5, kernel_size=3, padding=1)
    plain = nn.Conv2d(3, 5, kernel_size=3, padding=1)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    out_fast, out_plain = fast(x), plain(x)
    torch.testing.assert_close(out_fast, out_plain)
    grad = torch.randn_like(out_plain)
    grads_fast = torch.autograd.grad(out_fast, (x, fast.weight, fast.bias), grad)
    grads_plain = torch.autograd.grad(out_plain, (x, plain.weight, plain.bias), grad)
    for a, b in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(a, b)
    assert all(p.is_contiguous() for p in fast.parameters())
    assert all(isinstance(m, ChannelsLastConv2d) for m in PatchEmbed(7, 1, 8, stem_widths=(4,)).modules()
               if isinstance(m, nn.Conv2d))
    assert type(PatchEmbed(7, 1, 8).proj) is nn.Conv2d  # no stem: the plain projection, as before


# ---------------------------------------------------------------- DINO head


def test_dino_head_output_shape_and_structure() -> None:
    head = DINOHead(D, out_dim=64, hidden_dim=32, bottleneck_dim=16, nlayers=3)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(D, 32), (32, 32), (32, 16)]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    out = head(torch.randn(5, D))
    assert out.shape == (5, 64)
    # L2-normalized bottleneck times unit-norm prototypes (g = 1): cosine similarities
    assert out.abs().max() <= 1 + 1e-5

    single = DINOHead(D, out_dim=64, bottleneck_dim=16, nlayers=1)
    assert [type(m) for m in single.mlp] == [nn.Linear]
    assert single(torch.randn(2, D)).shape == (2, 64)


def test_norm_last_layer_fixes_the_weight_norm() -> None:
    fixed = DINOHead(D, 64, 32, 16, norm_last_layer=True)
    free = DINOHead(D, 64, 32, 16, norm_last_layer=False)
    assert fixed.last_layer.weight_g.requires_grad is False
    assert fixed.last_layer.weight_v.requires_grad is True
    assert free.last_layer.weight_g.requires_grad is True
    assert torch.equal(fixed.last_layer.weight_g, torch.ones(64, 1))
    fixed(torch.randn(4, D)).sum().backward()
    assert fixed.last_layer.weight_g.grad is None
    assert fixed.last_layer.weight_v.grad is not None


def test_weight_norm_linear_equals_explicitly_normalized_weights() -> None:
    layer = WeightNormLinear(16, 10, fix_norm=False)
    with torch.no_grad():
        layer.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(7, 16)
    v, g = layer.weight_v, layer.weight_g
    expected = F.linear(x, g * v / v.norm(dim=1, keepdim=True))
    torch.testing.assert_close(layer(x), expected)

    # and equals torch's own weight-norm parametrization holding the same g and v
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(16, 10, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(g)
        reference.parametrizations.weight.original1.copy_(v)
    torch.testing.assert_close(layer(x), reference(x))

    # gradients agree too
    layer(x).square().sum().backward()
    reference(x).square().sum().backward()
    grads = (reference.parametrizations.weight.original0.grad, reference.parametrizations.weight.original1.grad)
    torch.testing.assert_close(layer.weight_g.grad, grads[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.weight_v.grad, grads[1], atol=1e-4, rtol=1e-4)


def test_weight_norm_state_dict_keys() -> None:
    head = DINOHead(D, 64, 32, 16)
    keys = set(head.state_dict())
    assert {"last_layer.weight_g", "last_layer.weight_v"} <= keys
    assert "last_layer.weight" not in keys
    assert head.state_dict()["last_layer.weight_g"].shape == (64, 1)
    assert head.state_dict()["last_layer.weight_v"].shape == (64, 16)


# ---------------------------------------------------------------- multi-crop wrapper


class CountingBackbone(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.inner = backbone
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.inner(x)


@pytest.mark.parametrize(
    ("sizes", "expected_calls"),
    [
        ([28, 28, 14, 14, 14], [(6, 1, 28, 28), (9, 1, 14, 14)]),
        ([28, 14, 28], [(3, 1, 28, 28), (3, 1, 14, 14), (3, 1, 28, 28)]),  # only consecutive crops are grouped
        ([21], [(3, 1, 21, 21)]),
    ],
)
def test_multicrop_wrapper_groups_by_resolution(sizes: list[int], expected_calls: list[tuple]) -> None:
    backbone = CountingBackbone(small_vit().eval())
    head = DINOHead(D, 64, 32, 16).eval()
    wrapper = MultiCropWrapper(backbone, head).eval()
    crops = [torch.randn(3, 1, s, s) for s in sizes]
    with torch.no_grad():
        out = wrapper(crops).cls_logits
        assert backbone.calls == expected_calls
        assert out.shape == (3 * len(sizes), 64)
        separately = torch.cat([head(backbone.inner(c)) for c in crops])
    torch.testing.assert_close(out, separately, atol=1e-5, rtol=1e-4)


def test_vit_is_a_vision_transformer() -> None:
    assert isinstance(vit("vit_tiny", img_size=28, patch_size=7, in_chans=1, depth=1), VisionTransformer)


def test_attention_takes_the_explicit_path_in_bf16_on_cpu_with_the_same_result() -> None:
    """bf16 on CPU uses matmul + softmax (faster than the fused kernel there); it computes the same attention."""
    from dinolab.models.layers import _explicit_is_faster

    torch.manual_seed(0)
    attn = Attention(64, 4)
    x = torch.randn(3, 17, 64)
    q = torch.zeros(1, 4, 17, 16)
    assert _explicit_is_faster(q.bfloat16()) and not _explicit_is_faster(q)
    assert not _explicit_is_faster(torch.zeros(1, 4, 1025, 16, dtype=torch.bfloat16))  # long: fused, for memory
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, weights = attn(x)
    assert weights is None and fast.dtype == torch.bfloat16
    b, n, d = x.shape
    qkv = attn.qkv(x.bfloat16().float()).reshape(b, n, 3, 4, 16).permute(2, 0, 3, 1, 4)
    fused = F.scaled_dot_product_attention(*qkv).transpose(1, 2).reshape(b, n, d)
    torch.testing.assert_close(fast.float(), attn.proj(fused), atol=0.05, rtol=0.05)


def test_activation_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    """Recomputing the blocks in the backward (train.activation_checkpointing) changes memory, not results:
    drop path draws the same masks in the recomputation."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=3, num_heads=2,
                                  drop_path_rate=0.3).train()
        model.activation_checkpointing = checkpointing
        x = torch.randn(4, 1, 28, 28)
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=1e-6, msg=name)
