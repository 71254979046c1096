"""Typed run configuration: dataclasses, shipped YAML recipes, dotted overrides, validation.

A config is plain data. `load()` resolves a recipe name or a YAML path, merges the chain of
`base:` recipes it inherits from, applies `key=value` overrides and validates everything at once,
so a typo fails before any work starts. `show()` prints what a recipe resolves to.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
BASE_KEY = "base"  # a recipe with `base: NAME_OR_PATH` inherits every key it does not set itself

# DINO's two global views: the teacher sees only these; losses, heads, transforms and the trainer read it here.
NUM_GLOBAL_CROPS = 2
# The normalization the released DINO, iBOT and DINOv2 weights (and ImageNet recipes) expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    # vit_tiny | vit_small | vit_base | vit_large | vit_giant; resnet18 | resnet50 (students of distill.teacher)
    arch: str = "vit_tiny"
    depth: int = 0  # number of blocks; 0 = the architecture's (12 for tiny/small/base)
    patch_size: int = 16
    in_chans: int = 3
    img_size: int = 224  # size the position embedding is learned at; other sizes are interpolated
    drop_path_rate: float = 0.1
    num_register_tokens: int = 0
    layerscale_init: float | None = None  # e.g. 1e-5 for DINOv2; None disables LayerScale
    ffn: str = "mlp"  # mlp | swiglu
    qkv_bias: bool = True
    # widths of 3x3 convolutions run at full resolution before the patch projection (a convolutional stem for
    # images of a few dozen pixels, see models/layers.PatchEmbed); empty = the plain linear patch embedding
    conv_stem: tuple[int, ...] = ()
    # ResNet students: pixels per cell of the last feature map, set by the stem: 32 (torchvision's) | 16 | 8 (3x3
    # stride-1 conv, with | without max-pool: for images of a few dozen pixels; see models/resnet.py); ViTs ignore it
    resnet_stride: int = 32
    # continued pretraining: the student and teacher backbones start from this file or run dir (anything
    # dinolab.hub.load_backbone reads); the architecture is the file's (keys above left at their defaults take
    # its values, others must agree with it). See docs/adapt.md
    init: str = ""


@dataclass
class HeadConfig:
    out_dim: int = 65536  # number of prototypes K
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    # iBOT's patch head (used when loss.ibot_weight > 0): its own prototypes, or the [CLS] head's weights
    patch_out_dim: int = 8192
    shared: bool = False  # True: one head for [CLS] and patches (iBOT's shared_head); needs patch_out_dim = out_dim


@dataclass
class DataConfig:
    dataset: str = "folder"  # folder | fmnist
    path: str = ""  # image folder, or Fashion-MNIST dir ("" = Debian's default location)
    # a text file naming the training images, one path per line (relative ones from the list's folder), as
    # `dinolab curate --out` writes; replaces data.path for training (k-NN checks still read data.path)
    file_list: str = ""
    split: str = "train"  # for fmnist: train | test
    canvas_size: int = 0  # folder images are resized+center-cropped to this first (0 = global size * 8/7)
    global_crops_size: int = 224
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crops_size: int = 96
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    color_jitter: bool = True  # official: brightness .4, contrast .4, saturation .2, hue .1 with p=0.8
    hflip: bool = True  # random horizontal flip, p=0.5; off for data with a handedness (digits, text)
    solarize: bool = True  # solarization of the second global crop, p=0.2 (the paper's)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian blur sigma range, in pixels of the crop
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_workers: int = 1
    # small_images: measure channels, mean/std and image size on a sample of data.path and pick patch and crop
    # sizes from them (dinolab.data.stats.resolve_from_images), printing what was chosen
    auto: bool = False


@dataclass
class MaskConfig:
    """Blockwise masking of the student's global crops for iBOT's masked-image-modeling loss."""

    enabled: bool = False
    ratio: tuple[float, float] = (0.1, 0.5)  # fraction of patches masked, drawn per masked image
    probability: float = 0.5  # fraction of global crops that get a mask
    aspect: tuple[float, float] = (0.3, 1 / 0.3)  # block aspect-ratio range


@dataclass
class LossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # final teacher temperature (the paper: 0.04, up to 0.07)
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0  # may be a fraction: the warm-up is per iteration
    center_momentum: float = 0.9
    centering: str = "ema"  # ema (DINO/iBOT) | sinkhorn (DINOv2's Sinkhorn-Knopp), for both losses
    sinkhorn_iterations: int = 3
    dino_weight: float = 1.0
    ibot_weight: float = 0.0  # > 0 turns on iBOT's masked-image-modeling loss (needs mask.enabled)
    ibot_teacher_temp: float = 0.07  # iBOT's own teacher temperature schedule for patch targets
    ibot_warmup_teacher_temp: float = 0.04
    koleo_weight: float = 0.0  # DINOv2: 0.1
    # guards against forgetting when continuing from model.init, both against the frozen initial backbone:
    gram_weight: float = 0.0  # DINOv3's Gram anchoring: patch-similarity structure of the global crops (losses/gram.py)
    anchor_weight: float = 0.0  # feature distillation: 1 - cosine to its [CLS] and patch features (losses/anchor.py)


@dataclass
class OptimConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.0005  # at batch 256; scaled linearly by batch_size / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 10  # fractions allowed, for short runs
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # gradient norm clip; 0 disables
    clip_mode: str = "parameter"  # what one norm covers: parameter (DINO, iBOT) | module (DINOv2) | global
    freeze_last_layer_epochs: float = 1  # the prototypes stay fixed this long (fractions allowed)
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scaling: str = "linear"  # linear: lr * batch/256 (DINO, iBOT) | sqrt: lr * sqrt(batch/1024) (DINOv2)
    layer_decay: float = 1.0  # layer-wise lr decay: block i of n gets lr * decay**(n - i) (DINOv2: 0.9)
    patch_embed_lr_mult: float = 1.0  # extra lr factor for the patch embedding (DINOv2: 0.2)
    # with model.init: the student's backbone gets no update for this many iterations while the heads warm up
    freeze_backbone_iterations: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/dino"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    log_every: int = 20  # iterations between metrics.jsonl lines
    save_every_epochs: int = 1
    # also save checkpoint.pth mid-epoch every N iterations / M minutes (0 = off); a resumed run continues
    # from that very batch. SIGTERM / SIGUSR1 (what schedulers send before preempting) save and stop too.
    save_every_iterations: int = 0
    save_every_minutes: float = 0.0
    keep_last: int = 2  # checkpoints kept besides checkpoint.pth
    # file: checkpoint.pth, the whole state written by rank 0 | sharded: checkpoint.dcp/, each rank writes its
    # shards (torch.distributed.checkpoint), for models whose whole state does not fit one host
    checkpoint_format: str = "file"
    async_save: bool = False  # write checkpoints (either format) in a background thread while training goes on
    # Several processes (torchrun): auto = DDP when launched with more than one, none = refuse more than one,
    # fsdp = FSDP2, student and teacher sharded over the processes (models too large to replicate)
    parallel: str = "auto"  # auto | none | ddp | fsdp
    activation_checkpointing: bool = False  # recompute each block's activations in the backward: less memory
    # torch.compile the student's and the teacher's forward: for GPUs; on CPU the first step compiles for ~1 min
    compile: bool = False
    collective_timeout_minutes: float = 10.0  # a rank that died or hangs fails the others after this long


@dataclass
class EvalConfig:
    knn_k: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = 0.07
    batch_size: int = 256
    test_path: str = ""  # labeled data for k-NN after training (fmnist: "" = Debian test split)
    knn_every: int = 0  # iterations between k-NN checks during training (logged as knn_top1); 0 = off
    knn_monitor_train: int = 10000  # the check uses this many images spread evenly over the train / test splits
    knn_monitor_test: int = 2000
    # a second labeled domain the k-NN check also scores (logged as knn_reference_top1), to see forgetting
    # when adapting: a folder with train/ and test/ class folders, or fmnist / fmnist:DIR (Fashion-MNIST)
    reference_data: str = ""


@dataclass
class DistillConfig:
    """A frozen, trained teacher supervises this (smaller) student, in one of two ways, each with its own key
    (the two train different things, so the file's kind must not switch the recipe silently):

    - `teacher_checkpoint`: DINOv2 distillation. A dinolab training checkpoint *with heads*; the student and its
      heads learn the teacher's DINO/iBOT head outputs (same prototypes).
    - `teacher`: feature distillation (train/feature_distill.py). A *headless* backbone, any file
      `dinolab.hub.load_backbone` reads (DINO/iBOT/DINOv2 releases, HF/timm, `dinolab export`); the student (a
      ViT or a ResNet, model.arch) matches the teacher's [CLS] and its patch-to-patch similarities, no heads.
    """

    teacher_checkpoint: str = ""  # dinolab checkpoint of the teacher; "" = self-distillation (EMA teacher)
    teacher: str = ""  # headless backbone file of the teacher for feature distillation; "" = off
    teacher_size: int = 0  # feature distillation: the side the teacher sees each crop at; 0 = the crop's own
    cls_weight: float = 1.0  # feature distillation: cosine distance, projected student global feature vs [CLS]
    patch_weight: float = 1.0  # feature distillation: KL between patch-similarity distributions
    similarity_temp: float = 0.1  # feature distillation: softmax temperature of the patch cosine similarities


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    """Tuples to lists so YAML stays readable."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def available_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Build a Config from a shipped recipe name or a YAML file, then apply `a.b=value` overrides.

    A recipe's `base:` chain is merged first (child wins key by key), so overrides beat every file.
    """
    raw = _merged(recipe_chain(name_or_path))
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.epochs=5")
        section, dot, leaf = key.strip().partition(".")
        if not dot:
            raise ConfigError(f"override {item!r}: key must be section.key, e.g. optim.epochs")
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section!r} is a section, not a value")
        raw[section][leaf] = yaml.safe_load(text) if text.strip() else ""
    return from_dict(raw)


def show(name_or_path: str | Path, overrides: list[str] | None = None) -> str:
    """The resolved, validated config as YAML (what `save` writes), headed by the files it came from.

    Inheritance hides values in base files; this is how to see what a run will actually use.
    """
    paths = recipe_chain(name_or_path)
    names = [p.name if p.parent == CONFIG_DIR.resolve() else str(p) for p in paths]
    header = f"# resolved from: {' -> '.join(names)}"
    if len(paths) > 1:
        header += " (each file extends the next)"
    if overrides:
        header += f"\n# overrides: {' '.join(overrides)}"
    return f"{header}\n{_dump(load(name_or_path, overrides))}"


def recipe_chain(name_or_path: str | Path) -> list[Path]:
    """The recipe file and the files it inherits from through `base:`, the named file first.

    A missing base or a cycle fails here, naming the files, before anything is merged.
    """
    chain = [_locate(name_or_path, named_by=None)]
    while BASE_KEY in (raw := _read(chain[-1], base_of=chain[-2] if len(chain) > 1 else None)):
        base = raw[BASE_KEY]
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{chain[-1]}: {BASE_KEY}: must name one shipped recipe or YAML file, got {base!r}")
        path = _locate(base.strip(), named_by=chain[-1])
        if path in chain:
            loop = " -> ".join(str(p) for p in [*chain[chain.index(path):], path])
            raise ConfigError(f"recipe inheritance cycle {loop}: remove the {BASE_KEY}: line that closes the loop")
        chain.append(path)
    return chain


def _locate(name_or_path: str | Path, named_by: Path | None) -> Path:
    """A recipe name (no suffix) is a shipped recipe; a relative base path is read from its naming file's folder."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    elif named_by is not None and not path.is_absolute():
        path = named_by.parent / path
    if path.is_file():
        return path.resolve()
    shipped = ", ".join(available_recipes())
    if named_by is None:
        raise ConfigError(
            f"config {str(name_or_path)!r} not found: give a YAML file path or one of the shipped recipes {shipped}"
        )
    raise ConfigError(
        f"{named_by}: {BASE_KEY} {str(name_or_path)!r} not found (looked for {path}): name one of the shipped "
        f"recipes {shipped}, or a YAML file (a relative path is read from {named_by.parent})"
    )


def _read(path: Path, base_of: Path | None = None) -> dict[str, Any]:
    """One recipe file's own mapping, as written; `base_of` names the file that inherits it, for errors."""
    where = f"{path} (the {BASE_KEY} of {base_of})" if base_of else str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model, data, optim, ...)")
    return raw


def _merged(chain: list[Path]) -> dict[str, Any]:
    """Deep-merge the chain from its root down; each file is checked alone first so errors name it."""
    merged: dict[str, Any] = {}
    for path in reversed(chain):
        # an empty section (`eval:`) sets nothing, so it must not wipe out the base's section
        raw = {key: {} if value is None else value for key, value in _read(path).items() if key != BASE_KEY}
        try:
            _build(Config, raw, prefix="")  # unknown keys and wrong types, before merging hides the file
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        merged = _deep_merge(merged, raw)
    return merged


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child wins key by key inside mappings; any other value (lists included) replaces the base's whole."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    """Convert nested dicts to a validated Config; unknown keys and wrong types name the key."""
    cfg = _build(Config, raw, prefix="")
    validate(cfg)
    return cfg


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(sorted(names))}"
        )
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value or {}, prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis and not isinstance(value, (list, tuple)):
            value = [value]  # eval.knn_k=20 means (20,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")
ARCHS = ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant")
RESNET_ARCHS = ("resnet18", "resnet50")  # students of feature distillation only (distill.teacher)
CLIP_MODES = ("parameter", "module", "global")  # what one gradient-norm clip covers (optim.clip_mode)


def validate(cfg: Config) -> None:
    """Reject values that would make a silent wrong run."""
    checks = [
        (cfg.model.arch in ARCHS + RESNET_ARCHS, "model.arch", f"must be one of {', '.join(ARCHS + RESNET_ARCHS)}"),
        (cfg.model.patch_size > 0, "model.patch_size", "must be positive"),
        (cfg.model.depth >= 0, "model.depth", "must be >= 0 (0 = the architecture's depth)"),
        (cfg.model.in_chans in (1, 3), "model.in_chans", "must be 1 or 3"),
        (0 <= cfg.model.drop_path_rate < 1, "model.drop_path_rate", "must be in [0, 1)"),
        (cfg.model.num_register_tokens >= 0, "model.num_register_tokens", "must be >= 0"),
        (all(w > 0 for w in cfg.model.conv_stem), "model.conv_stem", "must list positive convolution widths"),
        (cfg.model.ffn in ("mlp", "swiglu"), "model.ffn", "must be mlp or swiglu"),
        (cfg.head.out_dim > 0 and cfg.head.nlayers >= 1, "head", "out_dim > 0 and nlayers >= 1"),
        (cfg.data.dataset in ("folder", "fmnist"), "data.dataset", "must be folder or fmnist"),
        (cfg.data.split in ("train", "test"), "data.split", "must be train or test"),
        (cfg.data.global_crops_size % cfg.model.patch_size == 0, "data.global_crops_size",
         f"must be a multiple of model.patch_size={cfg.model.patch_size}"),
        (cfg.data.local_crops_number == 0 or cfg.data.local_crops_size % cfg.model.patch_size == 0,
         "data.local_crops_size", f"must be a multiple of model.patch_size={cfg.model.patch_size}"),
        (cfg.data.local_crops_number >= 0, "data.local_crops_number", "must be >= 0"),
        (_scale_ok(cfg.data.global_crops_scale), "data.global_crops_scale", "must be 0 < lo <= hi <= 1"),
        (_scale_ok(cfg.data.local_crops_scale), "data.local_crops_scale", "must be 0 < lo <= hi <= 1"),
        (len(cfg.data.mean) == len(cfg.data.std) == cfg.model.in_chans, "data.mean/std",
         f"need one value per channel (model.in_chans={cfg.model.in_chans})"),
        (all(s > 0 for s in cfg.data.std), "data.std", "must be positive"),
        (cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0"),
        (not cfg.data.auto or cfg.data.dataset == "folder", "data.auto",
         "measures a folder of images: needs data.dataset=folder"),
        (not cfg.data.file_list or cfg.data.dataset == "folder", "data.file_list",
         "names image files: needs data.dataset=folder"),
        (cfg.loss.student_temp > 0 and cfg.loss.teacher_temp > 0 and cfg.loss.warmup_teacher_temp > 0,
         "loss temperatures", "must be positive"),
        (0 <= cfg.loss.center_momentum < 1, "loss.center_momentum", "must be in [0, 1)"),
        (cfg.loss.warmup_teacher_temp_epochs >= 0, "loss.warmup_teacher_temp_epochs", "must be >= 0 (0 = no warm-up)"),
        (cfg.optim.epochs >= 1, "optim.epochs", "must be >= 1"),
        (cfg.optim.batch_size >= 2, "optim.batch_size", "must be >= 2"),
        (cfg.optim.lr > 0, "optim.lr", "must be positive"),
        (0 <= cfg.optim.warmup_epochs <= cfg.optim.epochs, "optim.warmup_epochs", "must be in [0, epochs]"),
        (cfg.optim.freeze_last_layer_epochs >= 0, "optim.freeze_last_layer_epochs", "must be >= 0"),
        (cfg.optim.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables)"),
        (0 <= cfg.optim.momentum_teacher <= cfg.optim.momentum_teacher_end <= 1, "optim.momentum_teacher",
         "need 0 <= momentum_teacher <= momentum_teacher_end <= 1"),
        (cfg.train.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision",
         "must be auto, fp32, bf16 or fp16"),
        (cfg.train.device == "auto" or cfg.train.device.split(":")[0] in ("cpu", "cuda"), "train.device",
         "must be auto, cpu, cuda or cuda:N"),
        (cfg.train.log_every >= 1 and cfg.train.save_every_epochs >= 1, "train.log_every/save_every_epochs",
         "must be >= 1"),
        (cfg.train.keep_last >= 1, "train.keep_last", "must be >= 1"),
        (cfg.train.save_every_iterations >= 0 and cfg.train.save_every_minutes >= 0, "train.save_every_*",
         "must be >= 0 (0 = off)"),
        (cfg.train.parallel in PARALLEL_MODES, "train.parallel", f"must be one of {', '.join(PARALLEL_MODES)}"),
        (cfg.train.checkpoint_format in ("file", "sharded"), "train.checkpoint_format", "must be file or sharded"),
        (cfg.train.collective_timeout_minutes > 0, "train.collective_timeout_minutes", "must be positive"),
        (all(k >= 1 for k in cfg.eval.knn_k), "eval.knn_k", "every k must be >= 1"),
        (cfg.eval.knn_temperature > 0, "eval.knn_temperature", "must be positive"),
        (cfg.eval.knn_every >= 0, "eval.knn_every", "must be >= 0 (0 = off)"),
        (cfg.eval.knn_monitor_train >= 20 and cfg.eval.knn_monitor_test >= 1, "eval.knn_monitor_train/test",
         "need >= 20 train and >= 1 test images"),
    ]
    checks += _recipe_checks(cfg) + _feature_distill_checks(cfg) + _adapt_checks(cfg)
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why}")


# Sinkhorn-Knopp gives every prototype an equal share of a batch; with fewer than K/64 teacher
# outputs per step each target must spread over > 64 prototypes and the teacher cannot sharpen.
SINKHORN_MAX_PROTOTYPES_PER_SAMPLE = 64


def _recipe_checks(cfg: Config) -> list[tuple[bool, str, str]]:
    """iBOT / DINOv2 options: masking, the patch loss, Sinkhorn-Knopp, KoLeo, lr decay."""
    m, loss, o = cfg.mask, cfg.loss, cfg.optim
    grid = cfg.data.global_crops_size // cfg.model.patch_size
    n_patches = grid * grid
    teacher_samples = NUM_GLOBAL_CROPS * o.batch_size
    distilling = bool(cfg.distill.teacher_checkpoint)
    # patch targets per step: the masked patches, or (distillation without masks) every global-crop patch
    masked_patches = teacher_samples * n_patches * (m.probability * m.ratio[0] if m.enabled else 1)
    sinkhorn = loss.centering == "sinkhorn"
    return [
        (0 <= m.ratio[0] <= m.ratio[1] < 1, "mask.ratio", f"{m.ratio} must satisfy 0 <= min <= max < 1"),
        (0 <= m.probability <= 1, "mask.probability", "must be in [0, 1]"),
        (0 < m.aspect[0] <= m.aspect[1], "mask.aspect", "must satisfy 0 < min <= max"),
        (not m.enabled or int(m.ratio[1] * n_patches) >= 1, "mask.ratio",
         f"max {m.ratio[1]} of the {n_patches} patches of a global crop masks no patch at all; raise it"),
        (not m.enabled or grid >= 2, "mask", f"a {grid}x{grid} patch grid is too small for block masks"),
        (not m.enabled or round(m.probability * teacher_samples) >= 1, "mask.probability",
         f"masks no image of the {teacher_samples} global crops per step "
         f"(batch {o.batch_size} x {NUM_GLOBAL_CROPS}); raise it"),
        (loss.ibot_weight >= 0 and loss.dino_weight >= 0 and loss.koleo_weight >= 0, "loss weights",
         "must be >= 0"),
        (loss.ibot_weight == 0 or m.enabled or distilling, "loss.ibot_weight",
         "the iBOT loss needs masked patches: set mask.enabled=true (only distillation may go without)"),
        (not m.enabled or loss.ibot_weight > 0, "mask.enabled",
         "masking without the iBOT loss only corrupts the student's input: set loss.ibot_weight > 0"),
        (loss.ibot_teacher_temp > 0 and loss.ibot_warmup_teacher_temp > 0, "loss.ibot_teacher_temp",
         "must be positive"),
        (not cfg.head.shared or cfg.head.patch_out_dim == cfg.head.out_dim, "head.patch_out_dim",
         f"a shared head has one set of prototypes: set it to head.out_dim={cfg.head.out_dim}"),
        (cfg.head.patch_out_dim > 0, "head.patch_out_dim", "must be > 0"),
        (loss.centering in ("ema", "sinkhorn"), "loss.centering", "must be ema or sinkhorn"),
        (loss.sinkhorn_iterations >= 1, "loss.sinkhorn_iterations", "must be >= 1"),
        (not sinkhorn or cfg.head.out_dim <= SINKHORN_MAX_PROTOTYPES_PER_SAMPLE * teacher_samples,
         "loss.centering",
         f"Sinkhorn-Knopp cannot balance head.out_dim={cfg.head.out_dim} prototypes over {teacher_samples} "
         f"teacher outputs per step (batch {o.batch_size} x {NUM_GLOBAL_CROPS} global crops): "
         "raise optim.batch_size to "
         f">= {-(-cfg.head.out_dim // (NUM_GLOBAL_CROPS * SINKHORN_MAX_PROTOTYPES_PER_SAMPLE))}, lower head.out_dim, "
         "or use loss.centering=ema"),
        (not (sinkhorn and loss.ibot_weight > 0)
         or cfg.head.patch_out_dim <= SINKHORN_MAX_PROTOTYPES_PER_SAMPLE * masked_patches,
         "loss.centering",
         f"Sinkhorn-Knopp cannot balance head.patch_out_dim={cfg.head.patch_out_dim} prototypes over as few "
         f"as {masked_patches:.0f} masked patches per step: raise optim.batch_size or mask.ratio, lower "
         "head.patch_out_dim, or use loss.centering=ema"),
        (o.lr_scaling in ("linear", "sqrt"), "optim.lr_scaling", "must be linear or sqrt"),
        (o.clip_mode in CLIP_MODES, "optim.clip_mode",
         "must be parameter (each parameter's norm, DINO), module (backbone and each head, DINOv2) or global"),
        (0 < o.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1]"),
        (o.patch_embed_lr_mult > 0, "optim.patch_embed_lr_mult", "must be positive"),
    ]


def _feature_distill_checks(cfg: Config) -> list[tuple[bool, str, str]]:
    """Feature distillation (distill.teacher) trains a student without heads on the global crops, on one process
    or under DDP; a ResNet student exists for it alone."""
    d, distilling = cfg.distill, bool(cfg.distill.teacher)
    resnet = cfg.model.arch in RESNET_ARCHS
    return [
        (not (distilling and d.teacher_checkpoint), "distill.teacher",
         "feature distillation from a headless backbone and distill.teacher_checkpoint (DINOv2 distillation through "
         "the heads) exclude each other: set one of them to ''"),
        (not resnet or distilling, "model.arch",
         f"a ResNet ({cfg.model.arch}) has no DINO heads: it can only be trained by feature distillation; set "
         "distill.teacher to a backbone file, or use a ViT"),
        (cfg.model.resnet_stride in (32, 16, 8), "model.resnet_stride", "must be 32, 16 or 8"),
        (not (resnet and cfg.optim.layer_decay != 1), "optim.layer_decay",
         "layer-wise lr decay is defined over transformer blocks: set it to 1 for a ResNet"),
        (not distilling or cfg.data.local_crops_number == 0, "data.local_crops_number",
         "feature distillation trains on the global crops only: set it to 0 (local crops would be made for nothing)"),
        (not distilling or not cfg.mask.enabled, "mask.enabled", "feature distillation masks nothing: set it to false"),
        (not distilling or (cfg.train.parallel != "fsdp" and cfg.train.checkpoint_format == "file"), "train.parallel",
         "feature distillation runs on one process or under DDP and saves file checkpoints: use train.parallel=auto "
         "and train.checkpoint_format=file"),
        (not distilling or not (cfg.train.compile or cfg.train.activation_checkpointing), "train.compile",
         "feature distillation does not compile or checkpoint activations: set train.compile and "
         "train.activation_checkpointing to false"),
        (d.teacher_size >= 0, "distill.teacher_size", "must be >= 0 (0 = the crop's own size)"),
        (d.cls_weight >= 0 and d.patch_weight >= 0 and d.cls_weight + d.patch_weight > 0, "distill.cls_weight",
         "distill.cls_weight and distill.patch_weight must be >= 0, not both 0"),
        (d.similarity_temp > 0, "distill.similarity_temp", "must be positive"),
    ]


def _adapt_checks(cfg: Config) -> list[tuple[bool, str, str]]:
    """Continued pretraining from model.init: the warm-up and the guards need an initial model."""
    init, loss = bool(cfg.model.init), cfg.loss
    return [
        (cfg.optim.freeze_backbone_iterations >= 0, "optim.freeze_backbone_iterations", "must be >= 0 (0 = off)"),
        (init or cfg.optim.freeze_backbone_iterations == 0, "optim.freeze_backbone_iterations",
         "warms up heads on a pretrained backbone: set model.init=FILE, or set it to 0"),
        (loss.gram_weight >= 0 and loss.anchor_weight >= 0, "loss.gram_weight/anchor_weight", "must be >= 0"),
        (init or loss.gram_weight == 0, "loss.gram_weight",
         "anchors to the initial model of model.init: set model.init=FILE, or set it to 0"),
        (init or loss.anchor_weight == 0, "loss.anchor_weight",
         "anchors to the initial model of model.init: set model.init=FILE, or set it to 0"),
        (not cfg.eval.reference_data or cfg.eval.knn_every > 0, "eval.reference_data",
         "is scored by the in-training k-NN check: set eval.knn_every > 0"),
        (not (init and cfg.distill.teacher), "model.init",
         "feature distillation (distill.teacher) trains its student from scratch and does not read model.init: "
         "set one of them to ''"),
    ]


def _scale_ok(scale: tuple[float, float]) -> bool:
    return 0 < scale[0] <= scale[1] <= 1


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(_dump(cfg))


def _dump(cfg: Config) -> str:
    """Plain YAML in field order: the merged values only, never a `base:` line."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
