"""Load backbone weights from any file the DINO family ships, and save them in the official layouts.

Files are untrusted input: `.pth`/`.pt` files are unpickled with `weights_only=True` (tensors and plain
containers only, plus `argparse.Namespace`, the `args` entry of DINO's and iBOT's full training
checkpoints); `.safetensors` files hold no code at all. Every load is strict: a key the model lacks,
a key the file lacks or a shape that differs is an error that names them, never a partial load.
The one exception is `mask_token`, which only masked-image training uses and which DINO's and
iBOT's teacher checkpoints do not have: it is then left at its initial value and reported.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dinolab.config import Config, from_dict
from dinolab.hub.convert import from_dinolab, heads_of, to_dinolab
from dinolab.hub.specs import MODEL_SPECS, ModelSpec
from dinolab.io import (
    CheckpointError,
    atomic_path,
    atomic_save,
    is_training_checkpoint,
    load_state_strict,
    read_checkpoint,
    read_metadata,
    short_list,
)
from dinolab.models.build import backbone_kwargs, build_backbone, vit_kwargs_of
from dinolab.models.resnet import RESNET_LAYERS, ResNetBackbone
from dinolab.models.vit import VisionTransformer

log = logging.getLogger(__name__)

# Entries that hold the backbone inside a training checkpoint, in the order they are looked for: the EMA
# teacher is the model DINO, iBOT and DINOv2 evaluate.
CONTAINER_KEYS = ("teacher", "model", "state_dict", "model_state_dict")
OPTIONAL_KEYS = ("mask_token",)
ARCH_METADATA_KEY = "dinolab_vit"  # safetensors metadata: the VisionTransformer arguments, as JSON
# safetensors metadata: the input normalization the weights were trained with, as JSON {"mean": [...], "std": [...]}
NORMALIZATION_METADATA_KEY = "dinolab_normalization"
Normalization = tuple[Sequence[float], Sequence[float]]  # (mean, std), one value per input channel each
# (layout, has registers) -> how the implementation that wrote it interpolates position embeddings
INTERPOLATION = {
    ("dinov2", False): dict(interpolate_offset=0.1, interpolate_antialias=False),  # DINO, iBOT, DINOv2
    ("dinov2", True): dict(interpolate_offset=0.0, interpolate_antialias=True),  # DINOv2 with registers
    ("hf", False): dict(interpolate_offset=0.0, interpolate_antialias=False),  # transformers Dinov2Model
    ("hf", True): dict(interpolate_offset=0.0, interpolate_antialias=True),  # Dinov2WithRegistersModel
    ("timm", True): dict(interpolate_offset=0.0, interpolate_antialias=True),
}
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1536: 24}  # the DINO family's ViT-Ti/S/B/L/g


@dataclass
class LoadReport:
    """What a load did: the layout it read, the entry it took the weights from, what it left out."""

    source: str
    layout: str
    entry: str | None = None
    dropped: list[str] = field(default_factory=list)  # head weights in the file, not part of a backbone
    left_at_init: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.source} ({self.layout} layout{f', entry {self.entry!r}' if self.entry else ''})"]
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} head tensors ({', '.join(self.dropped[:3])}, ...)")
        if self.left_at_init:
            parts.append(f"not in the file, left at init: {', '.join(self.left_at_init)}")
        return "; ".join(parts)


def read_file(source: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The object stored in a checkpoint file, run dir or URL, and its safetensors metadata (else empty)."""
    if isinstance(source, str) and re.match(r"https?://", source):
        source = _download(source)
    return read_checkpoint(source), read_metadata(source)


def _download(url: str) -> Path:
    """A URL's file, through torch.hub's cache (downloaded once, into $TORCH_HOME/hub/checkpoints)."""
    from torch.hub import download_url_to_file, get_dir

    cached = Path(get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(url, str(cached))
    return cached


def backbone_state(obj: dict[str, Any], source: str, entry: str | None = None) -> tuple[dict[str, Tensor], str | None]:
    """The backbone's tensors inside a checkpoint: the `entry` given, else the first of CONTAINER_KEYS
    present, else the whole dict. Keys prefixed `teacher.` / `student.` (DINOv2 training checkpoints)
    keep the teacher's."""
    if entry is None:
        entry = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
    if entry is not None:
        if not isinstance(obj.get(entry), dict):
            raise CheckpointError(f"{source} has no {entry!r} entry of weights; its entries: {short_list(obj)}")
        obj = obj[entry]
    if any(k.startswith("teacher.") for k in obj):
        obj = {k.removeprefix("teacher."): v for k, v in obj.items() if k.startswith("teacher.")}
    others = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
    if others or not obj:
        raise CheckpointError(
            f"{source}: {'entry ' + repr(entry) if entry else 'the file'} is not a dict of tensors "
            f"(non-tensor entries: {short_list(others) or 'none, it is empty'}); pass the entry holding the weights"
        )
    return obj, entry


def load_weights(model: nn.Module, source: str | Path, entry: str | None = None) -> LoadReport:
    """Load a checkpoint of any supported layout into `model` (a dinolab ViT or DINO's ResNet-50), strictly."""
    obj, _ = read_file(source)
    state, entry = backbone_state(obj, str(source), entry)
    return _load_state(model, state, str(source), entry)


def _load_state(model: nn.Module, state: dict[str, Tensor], source: str, entry: str | None) -> LoadReport:
    converted = to_dinolab(state)
    report = LoadReport(source, converted.layout, entry, converted.dropped)
    own = model.state_dict()
    for key in OPTIONAL_KEYS:
        if key in own and key not in converted.state:
            converted.state[key] = own[key]
            report.left_at_init.append(key)
    load_state_strict(model, converted.state, f"checkpoint {source}" + (f" (entry {entry!r})" if entry else ""))
    log.info(report.summary())
    return report


def infer_vit_kwargs(state: dict[str, Tensor], layout: str = "dinov2", num_heads: int | None = None) -> dict[str, Any]:
    """VisionTransformer arguments that fit a state dict in dinolab's names: width, depth, patch size and
    channels, registers, LayerScale, SwiGLU, the position-embedding grid, and the position-embedding
    interpolation of the implementation the `layout` comes from (see INTERPOLATION). The number of heads
    is not in the weights: `num_heads`, else the DINO family's for that width."""
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    if any(k not in state for k in needed):
        hint = " (a ResNet-50? use dinolab.hub.dino_resnet50(weights=...))" if "conv1.weight" in state else ""
        raise CheckpointError(
            f"not a ViT backbone{hint}: {', '.join(k for k in needed if k not in state)} missing; "
            f"its keys: {short_list(state)}"
        )
    dim = state["cls_token"].shape[-1]
    num_heads = num_heads or HEADS_BY_WIDTH.get(dim)
    if num_heads is None:
        raise CheckpointError(f"cannot tell the number of heads of a {dim}-wide ViT; pass num_heads= or arch=")
    _, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    stem_key = re.compile(r"patch_embed\.stem\.(\d+)\.weight")
    stem = sorted((int(m[1]), state[k].shape) for k in state if (m := stem_key.fullmatch(k)))
    if stem:  # a convolutional stem: the image channels are its first convolution's inputs
        in_chans = stem[0][1][1]
    side = math.isqrt(state["pos_embed"].shape[1] - 1)
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if not swiglu else None
    kwargs: dict[str, Any] = dict(
        img_size=side * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        ffn="swiglu" if swiglu else "mlp",
        num_register_tokens=registers,
        conv_stem=tuple(shape[0] for _, shape in stem),
        **INTERPOLATION[layout, bool(registers)],
    )
    if hidden is not None:
        kwargs["mlp_ratio"] = hidden / dim
    return kwargs


def load_backbone(
    source: str | Path, arch: str | None = None, entry: str | None = None, **kwargs: Any
) -> VisionTransformer:
    """A ViT backbone with the weights of `source`, in eval mode.

    `source`: a checkpoint file or URL in any supported layout (DINO / iBOT / DINOv2 releases and training
    checkpoints, HF transformers and timm state dicts, `dinolab export safetensors` files), or a dinolab
    training checkpoint or run directory (its EMA teacher). The architecture is `arch` (a name of
    dinolab.hub.MODEL_SPECS, e.g. 'dinov2_vits14') when given, else the one recorded in the file (dinolab
    checkpoints and exports), else inferred from the tensor shapes. `kwargs` override constructor arguments.
    A dinolab run that distilled features into a ResNet (model.arch=resnet*) gives that ResNet
    (dinolab.models.resnet.ResNetBackbone, torchvision's names).
    """
    return _load(source, arch, entry, **kwargs)[0]


def _load(
    source: str | Path, arch: str | None, entry: str | None, **kwargs: Any
) -> tuple[VisionTransformer, dict[str, Any], dict[str, str]]:
    """load_backbone, also returning the file's contents (a dinolab checkpoint's config is in there) and its
    safetensors metadata."""
    obj, metadata = read_file(source)
    state, entry = backbone_state(obj, str(source), entry)
    if arch is not None:
        model = VisionTransformer(**{**spec(arch).vit_kwargs(), **kwargs})
    elif is_training_checkpoint(obj) and obj["config"].get("model", {}).get("arch") in RESNET_LAYERS:
        model = build_backbone(from_dict(obj["config"]))  # a ResNet student of feature distillation
    else:
        if is_training_checkpoint(obj):  # a dinolab training checkpoint: the architecture it was trained with
            vit_kwargs = backbone_kwargs(from_dict(obj["config"]), drop_path_rate=0.0)
        elif ARCH_METADATA_KEY in metadata:
            vit_kwargs = json.loads(metadata[ARCH_METADATA_KEY])
        else:
            converted = to_dinolab(state)
            vit_kwargs = infer_vit_kwargs(converted.state, converted.layout, kwargs.get("num_heads"))
        model = VisionTransformer(**{**vit_kwargs, **kwargs})
    _load_state(model, state, str(source), entry)
    return model.eval(), obj, metadata


def load_backbone_with_heads(source: str | Path) -> tuple[VisionTransformer, dict[str, dict[str, Tensor]]]:
    """`load_backbone(source)` (architecture from the file), and the DINO / iBOT heads the file keeps next to
    that backbone (a dinolab run's EMA teacher, DINO's and DINOv2's full training checkpoints), by
    MultiCropWrapper attribute ('head', 'patch_head'); {} for released backbone-only files."""
    model, obj, _ = _load(source, None, None)
    state, _ = backbone_state(obj, str(source))
    return model, heads_of(state)


@dataclass
class LoadedModel:
    """A backbone and the config that describes its input: the training config of a dinolab checkpoint,
    else a default Config with the backbone's patch size and channels and the normalization recorded in the
    file (`dinolab export safetensors` of a dinolab run), else ImageNet's for RGB and 0.5 for other channel
    counts, and 224 px (what the released DINO, iBOT and DINOv2 weights expect)."""

    backbone: VisionTransformer
    config: Config
    trained_here: bool  # True when `config` is the dinolab training config the weights came with
    normalization_known: bool = False  # True when config.data.mean/std come from training, not a default


def load_model(source: str | Path, arch: str | None = None, entry: str | None = None, **kwargs: Any) -> LoadedModel:
    """The one loader evaluation and visualization use: any checkpoint `load_backbone` reads (same
    arguments), with the normalization and image size to feed it."""
    model, obj, metadata = _load(source, arch, entry, **kwargs)
    if is_training_checkpoint(obj):
        return LoadedModel(model, from_dict(obj["config"]), trained_here=True, normalization_known=True)
    cfg = Config()
    cfg.model.patch_size, cfg.model.in_chans = model.patch_size, model.in_chans
    recorded = metadata.get(NORMALIZATION_METADATA_KEY)
    if recorded:
        values = json.loads(recorded)
        cfg.data.mean, cfg.data.std = tuple(values["mean"]), tuple(values["std"])
    elif model.in_chans != len(cfg.data.mean):
        cfg.data.mean, cfg.data.std = (0.5,) * model.in_chans, (0.5,) * model.in_chans
    return LoadedModel(model, cfg, trained_here=False, normalization_known=bool(recorded))


def spec(name: str) -> ModelSpec:
    """The released architecture `name` (a key of MODEL_SPECS)."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def checked_normalization(
    normalization: Normalization, channels: int, given_as: str = "normalization"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) as float tuples, checked against the model's `channels`: a wrong count would broadcast or fail
    deep inside a transform, and a std <= 0 divides by zero or flips the image. `given_as` names the input in
    the error (a CLI flag, an argument)."""
    mean, std = (tuple(float(v) for v in values) for values in normalization)
    if len(mean) != channels or len(std) != channels or min(std, default=0) <= 0:
        raise ValueError(f"{given_as}: the model takes {channels}-channel images, so give {channels} mean(s) "
                         f"and {channels} positive std(s); got {mean} and {std}")
    return mean, std


def normalization_json(model: nn.Module, normalization: Normalization) -> str:
    """The input `normalization` (mean, std) as the metadata value exports record under NORMALIZATION_METADATA_KEY,
    checked against the model's input channels."""
    mean, std = checked_normalization(normalization, model.in_chans)
    return json.dumps({"mean": mean, "std": std})


def save_backbone(
    model: VisionTransformer,
    path: str | Path,
    layout: str = "dinov2",
    normalization: Normalization | None = None,
) -> Path:
    """Save the backbone's weights in `layout` ('dinov2', 'dino', 'hf' or 'timm', see convert.from_dinolab).

    `.safetensors` files also record the architecture and, when given, the input `normalization` (mean, std)
    the weights were trained with (metadata), so `load_backbone` rebuilds the model exactly and `load_model`
    feeds it as in training; other suffixes are written with torch.save, like the official `*_pretrain.pth`
    files, and carry neither. Atomic either way.
    """
    path = Path(path)
    if isinstance(model, ResNetBackbone):
        raise ValueError(
            "a ResNet backbone has no ViT layout: its checkpoint already holds torchvision's names; load it with "
            "dinolab.hub.load_backbone(RUN_DIR), or save model.state_dict() for torchvision code "
            f"(ResNetBackbone(**{model.arguments}) rebuilds the architecture)"
        )
    recorded = None if normalization is None else normalization_json(model, normalization)
    state = from_dinolab(model.state_dict(), layout)
    if path.suffix != ".safetensors":
        return atomic_save(state, path)
    from safetensors.torch import save_file

    metadata = {ARCH_METADATA_KEY: json.dumps(vit_kwargs_of(model)), "layout": layout}
    if recorded is not None:
        metadata[NORMALIZATION_METADATA_KEY] = recorded
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path

