"""Vision Transformer backbone for the DINO family (DINO, iBOT and DINOv2 variants).

Tokens are [CLS], then optional register tokens, then patches. Learned position embeddings
cover [CLS] + the patch grid of `img_size` and are bicubically interpolated for other sizes.

How they are interpolated differs between the reference implementations, and the outputs differ
with it, so it is a constructor option (`interpolate_offset`, `interpolate_antialias`, DINOv2's names):

- offset 0 (default), no antialias: resize to the target grid size; HF transformers' `Dinov2Model`.
- offset 0, antialias: the same with an antialiasing filter; DINOv2 with registers, HF
  `Dinov2WithRegistersModel`, timm.
- offset 0.1, no antialias: resize by the scale factor (grid + 0.1) / side; DINO, iBOT and
  DINOv2 without registers.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dinolab.models.layers import Block, PatchEmbed


class VisionTransformer(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layerscale_init: float | None = None,
        ffn: str = "mlp",
        num_register_tokens: int = 0,
        interpolate_offset: float = 0.0,
        interpolate_antialias: bool = False,
        conv_stem: tuple[int, ...] = (),
    ):
        super().__init__()
        self.patch_size = patch_size
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.conv_stem = tuple(conv_stem)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, self.conv_stem)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # replaces masked patches (iBOT)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rate, layerscale_init, ffn) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # recompute each block's activations during the backward instead of keeping them (less memory, ~1/3
        # more compute); set by train.activation_checkpointing
        self.activation_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, h: int, w: int) -> Tensor:
        """Position embedding for an h x w input: the learned grid, bicubically resized if needed.

        While exporting (ONNX, torch.export) the resize is always in the graph, so that one graph
        serves every input size; resizing to the learned grid's own size is the identity.
        """
        num_patches = self.pos_embed.shape[1] - 1
        gh, gw = h // self.patch_size, w // self.patch_size
        if not torch.compiler.is_exporting() and gh * gw == num_patches and gh == gw:
            return self.pos_embed
        return self.resample_pos_embed(self.pos_embed, gh, gw)

    def resample_pos_embed(self, pos_embed: Tensor, gh: int, gw: int) -> Tensor:
        """(1, 1 + side², D) [CLS] + square-grid embeddings resized to a gh x gw grid, the way this model
        interpolates (also used once, on saved weights, by the high-resolution training phase)."""
        side = int(math.sqrt(pos_embed.shape[1] - 1))
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            patch_pos = bicubic_resize_with_offset(patch_pos.float(), (gh, gw), self.interpolate_offset)
        else:
            patch_pos = F.interpolate(
                patch_pos.float(), size=(gh, gw), mode="bicubic", align_corners=False,
                antialias=self.interpolate_antialias,
            )
        patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        if x.shape[1] != self.in_chans:
            raise ValueError(f"the model takes {self.in_chans}-channel images, got {x.shape[1]} channels")
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(h, w)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor | None]:
        """Normalized [CLS], register and patch tokens (the DINOv2 dict), plus pre-norm tokens."""
        x = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)  # keeps the RNG state: drop path draws alike
            else:
                x = blk(x)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, x: Tensor) -> Tensor:
        """The normalized [CLS] token: the image embedding used by the DINO head and k-NN."""
        return self.forward_features(x)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Patch tokens of the last `n` blocks (or of the block indices in `n`), as in DINOv2."""
        wanted = set(range(len(self.blocks) - n, len(self.blocks))) if isinstance(n, int) else set(n)
        b, _, h, w = x.shape
        x = self.prepare_tokens(x)
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                outputs.append(self.norm(x) if norm else x)
        if len(outputs) != len(wanted):
            raise ValueError(f"asked for blocks {sorted(wanted)} of a {len(self.blocks)}-block model")
        r = self.num_register_tokens
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, r + 1 :] for out in outputs]
        if reshape:
            gh, gw = h // self.patch_size, w // self.patch_size
            patches = [p.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens, strict=True))
        return tuple(patches)

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Attention weights of the last block, (B, heads, N, N), tokens ordered [CLS], registers, patches."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1].forward_with_attention(x)[1]


def _bicubic_weights(out_size: int, in_size: int, scale: Tensor) -> Tensor:
    """(out_size, in_size) matrix of PyTorch's bicubic resampling (A = -0.75, half-pixel centers, edge
    clamping) where output pixel i samples input coordinate (i + 0.5) / scale - 0.5."""
    device = scale.device
    src = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) / scale - 0.5
    left = src.floor()
    t = (src - left).unsqueeze(1)
    a = -0.75
    dist = torch.cat((t + 1, t, 1 - t, 2 - t), dim=1)  # distance to the 4 taps at left-1 .. left+2
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    taps_weight = torch.where(dist <= 1, near, far)
    taps = (left.long().unsqueeze(1) + torch.arange(-1, 3, device=device)).clamp(0, in_size - 1)
    one_hot = (taps.unsqueeze(-1) == torch.arange(in_size, device=device)).to(torch.float32)
    return (taps_weight.unsqueeze(-1) * one_hot).sum(1)


def bicubic_resize_with_offset(x: Tensor, size: tuple[int, int], offset: float) -> Tensor:
    """Bicubic resize of (B, C, H, W) to `size` the way DINO, iBOT and DINOv2 resize position embeddings:
    `F.interpolate(x, scale_factor=((h + offset) / H, (w + offset) / W), mode="bicubic")`, and `x` itself
    when `size` is its own size.

    Written as two small matrix products with the scales computed from tensors, so that an exported graph
    (ONNX) computes it for any input size: exporters turn `F.interpolate` into a resize by output size,
    which maps coordinates differently, and would bake the scale factors of the example input in.
    """
    h_in, w_in = x.shape[-2:]
    rows = torch.ones(size[0], device=x.device).sum()  # the output size as a tensor, computed in the graph
    cols = torch.ones(size[1], device=x.device).sum()
    native = (rows == h_in) & (cols == w_in)
    scale_rows = torch.where(native, 1.0, (rows + offset) / h_in)
    scale_cols = torch.where(native, 1.0, (cols + offset) / w_in)
    return _bicubic_weights(size[0], h_in, scale_rows) @ x @ _bicubic_weights(size[1], w_in, scale_cols).T


ARCH_SIZES = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant": dict(embed_dim=1536, depth=40, num_heads=24),  # DINOv2's ViT-g (use ffn="swiglu")
}


def vit(arch: str, **kwargs) -> VisionTransformer:
    if arch not in ARCH_SIZES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCH_SIZES)}")
    return VisionTransformer(**{**ARCH_SIZES[arch], **kwargs})


vit_tiny = partial(vit, "vit_tiny")
vit_small = partial(vit, "vit_small")
vit_base = partial(vit, "vit_base")
vit_large = partial(vit, "vit_large")
vit_giant = partial(vit, "vit_giant")
