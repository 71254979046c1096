"""Key mapping between dinolab's state dict and the layouts of other implementations.

dinolab's ViT uses the official DINOv2 names (`blocks.N.attn.qkv`, `blocks.N.ls1.gamma`,
`blocks.N.mlp.w12`, `mask_token` of shape (1, D), `register_tokens`), which are also DINO's and
iBOT's names for the parts they have. The other layouts read here:

- DINO / iBOT / DINOv2 training checkpoints: `module.` / `backbone.` prefixes, heads (`head.`,
  `dino_head.`, `ibot_head.`), iBOT's `masked_embed` and `gamma_1`/`gamma_2` (LayerScale), DINOv2's
  chunked blocks `blocks.C.N.` (chunk C holding block N).
- HF transformers `Dinov2Model` / `Dinov2WithRegistersModel` (`embeddings.`, `encoder.layer.N.`, split
  q/k/v projections), in both the 4.x names of the files on the HF hub and the 5.x names.
- timm DINOv2 ViTs with registers (`reg_token`; the position embedding has no [CLS] entry, which timm
  folds into `cls_token`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")
HEAD_PREFIXES = ("head.", "patch_head.", "dino_head.", "ibot_head.", "classifier.")
LAYOUTS = ("dinov2", "dino", "hf", "timm")


@dataclass
class Converted:
    """A state dict in dinolab's names, what was left out of it, and the layout it came from."""

    state: dict[str, Tensor]
    layout: str
    dropped: list[str] = field(default_factory=list)


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def detect_layout(state: dict[str, Tensor]) -> str:
    """'hf', 'timm' or 'dinov2' (the official DINO / iBOT / DINOv2 names, which are also dinolab's)."""
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return "hf"
    if "reg_token" in state:
        return "timm"
    return "dinov2"


def to_dinolab(state: dict[str, Tensor]) -> Converted:
    """Map a backbone state dict of any layout above onto dinolab's names; heads are dropped (and listed)."""
    state = {_strip_wrappers(k): v for k, v in state.items()}
    if any(k.startswith("dinov2.") for k in state):  # HF models with a task head keep the backbone there
        state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    dropped = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    layout = detect_layout(state)
    if layout == "hf":
        state = _from_hf(state)
    elif layout == "timm":
        state = _from_timm(state)
    else:
        state = _from_official(state)
    return Converted(state, layout, dropped)


# head prefixes of training checkpoints -> dinolab's MultiCropWrapper attribute: DINO's and dinolab's `head.`,
# DINOv2's `dino_head.`, dinolab's and DINOv2's iBOT patch heads (their key names inside match dinolab's DINOHead)
HEAD_ATTRIBUTES = {"head.": "head", "dino_head.": "head", "patch_head.": "patch_head", "ibot_head.": "patch_head"}


def heads_of(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The DINO / iBOT heads stored next to a backbone in a training checkpoint, by MultiCropWrapper attribute
    ('head', 'patch_head'), each a state dict in DINOHead's names; {} when the file holds a backbone only."""
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        key = _strip_wrappers(key)
        for prefix, attribute in HEAD_ATTRIBUTES.items():
            if key.startswith(prefix):
                heads.setdefault(attribute, {})[key.removeprefix(prefix)] = value
    return heads


def _from_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # DINOv2 block chunks
        key = re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", key)  # iBOT LayerScale
        out["mask_token" if key == "masked_embed" else key] = value
    return out


_HF_RENAMES = (  # (HF name after `encoder.layer.N.`, dinolab name after `blocks.N.`)
    ("attention.o_proj.", "attn.proj."),
    ("attention.output.dense.", "attn.proj."),  # transformers 4.x
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.weights_in.", "mlp.w12."),  # 4.x SwiGLU: gate and up projections stacked, as in DINOv2
    ("mlp.weights_out.", "mlp.w3."),
    ("mlp.down_proj.", "mlp.w3."),
)
_HF_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def _block_entries(
    state: dict[str, Tensor], embeddings: dict[str, str], block_pattern: str, out: dict[str, Tensor],
    other: Callable[[str, Tensor], None],
) -> Iterator[tuple[str, str, Tensor]]:
    """Walk a state dict in one layout: embedding tensors go into `out` under their names in the other layout,
    tensors of block i are yielded as (i, the rest of their name, value), anything else goes to `other`."""
    for key, value in state.items():
        if key in embeddings:
            out[embeddings[key]] = value
        elif match := re.match(block_pattern, key):
            yield match[1], match[2], value
        else:
            other(key, value)


def _from_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}  # dinolab key -> parts to concatenate (q, k, v / gate, up)
    # unknown keys are kept: the strict load reports them as unexpected
    for index, rest, value in _block_entries(state, _HF_EMBEDDINGS, r"encoder\.layer\.(\d+)\.(.+)$", out,
                                             out.__setitem__):
        block = f"blocks.{index}."
        part = re.match(r"attention\.(?:attention\.)?(q_proj|k_proj|v_proj|query|key|value)\.(weight|bias)$", rest)
        if part:
            fused.setdefault(f"{block}attn.qkv.{part[2]}", {})[part[1][0]] = value
            continue
        part = re.match(r"mlp\.(gate_proj|up_proj)\.(weight|bias)$", rest)
        if part:
            fused.setdefault(f"{block}mlp.w12.{part[2]}", {})[part[1][0]] = value
            continue
        for hf_name, name in _HF_RENAMES:
            if rest.startswith(hf_name):
                rest = name + rest[len(hf_name) :]
                break
        out[block + rest] = value
    for key, parts in fused.items():
        order = "qkv" if ".attn." in key else "gu"
        if set(parts) != set(order):
            raise KeyError(f"HF checkpoint: {key} needs the {'/'.join(order)} projections, found only {sorted(parts)}")
        out[key] = torch.cat([parts[p] for p in order])
    return out


def _from_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's DINOv2-with-registers layout: no [CLS] position, which it adds into `cls_token` instead."""
    out = dict(state)
    out["register_tokens"] = out.pop("reg_token")
    pos = out["pos_embed"]
    out["pos_embed"] = torch.cat((torch.zeros_like(pos[:, :1]), pos), dim=1)
    return out


def from_dinolab(state: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """A dinolab backbone state dict in another layout: 'dinov2' (official DINOv2 names, the layout of
    `*_pretrain.pth`), 'dino' (DINO / iBOT backbone files), 'hf' (transformers 5.x `Dinov2Model` /
    `Dinov2WithRegistersModel`) or 'timm' (timm's DINOv2 ViTs)."""
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if layout == "dinov2":
        return state
    if layout == "dino":
        extras = sorted(k for k in state if k == "register_tokens" or re.search(r"\.(ls[12]|mlp\.w12|mlp\.w3)\.", k))
        if extras:
            raise ValueError(
                f"the DINO layout has no LayerScale, SwiGLU or registers, but this model has {', '.join(extras[:4])}"
                "; save it in the 'dinov2' layout instead"
            )
        state.pop("mask_token", None)
        return state
    if layout == "timm":
        state.pop("mask_token", None)
        if "register_tokens" in state:
            pos = state.pop("pos_embed")
            state["reg_token"] = state.pop("register_tokens")
            state["cls_token"] = state["cls_token"] + pos[:, :1]
            state["pos_embed"] = pos[:, 1:]
        return state
    if layout == "hf":
        return _to_hf(state)
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    to_hf_embeddings = {v: k for k, v in _HF_EMBEDDINGS.items()}
    renames = {  # transformers 5.x names
        "attn.proj.": "attention.o_proj.",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
        "mlp.w3.": "mlp.down_proj.",
    }
    out: dict[str, Tensor] = {}

    def no_hf_name(key: str, _value: Tensor) -> None:
        raise ValueError(f"no HF transformers name for {key}")

    for index, rest, value in _block_entries(state, to_hf_embeddings, r"blocks\.(\d+)\.(.+)$", out, no_hf_name):
        layer = f"encoder.layer.{index}."
        if rest.startswith("attn.qkv."):
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{layer}attention.{name}.{rest.split('.')[-1]}"] = chunk.clone()
            continue
        if rest.startswith("mlp.w12."):
            for name, chunk in zip(("gate_proj", "up_proj"), value.chunk(2), strict=True):
                out[f"{layer}mlp.{name}.{rest.split('.')[-1]}"] = chunk.clone()
            continue
        for name, hf in renames.items():
            if rest.startswith(name):
                rest = hf + rest[len(name) :]
                break
        out[layer + rest] = value
    return out
