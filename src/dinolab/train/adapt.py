"""Continued pretraining from a released backbone (`model.init`; docs/adapt.md).

The released DINO / iBOT / DINOv2 files hold a backbone without the heads self-distillation trains through.
Three pieces make them a starting point anyway:

- `resolve_init` reads the file once, takes the architecture from it and checks the file's heads, if any,
  against `head.*`: a contradiction is a ConfigError before any training.
- `InitialModel.start`: student and teacher backbones become the file's, bit for bit; the heads are the file's
  when it has them (DINO's and dinolab's training checkpoints), fresh otherwise.
- `BackboneFreeze`: the head warm-up (`optim.freeze_backbone_iterations`). Fresh heads emit noise; trained through
  from the start, that noise is what reaches the backbone's first gradients, the collapse users report. During
  the warm-up the teacher keeps following the student by EMA as usual: its backbone is the EMA of an unchanging
  backbone, hence stays exactly the released one, and its heads are the EMA of the student's warming heads, i.e.
  plain DINO on frozen features. So when the backbone starts to learn, the teacher is the released backbone plus
  warmed heads, and its targets do not jump (as they would if the student's heads were copied in at that moment).

The frozen initial backbone (`InitialModel.anchor`) is what the guards against forgetting compare the student
with (losses/gram.py, losses/anchor.py); the trainer keeps it only when one of their weights is > 0.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from dinolab.config import Config, ConfigError, ModelConfig, validate
from dinolab.hub.loading import load_backbone_with_heads
from dinolab.io import CheckpointError, load_state_strict
from dinolab.models.build import build_backbone, vit_kwargs_of
from dinolab.models.heads import MultiCropWrapper
from dinolab.models.vit import ARCH_SIZES, VisionTransformer

log = logging.getLogger(__name__)

# ModelConfig keys the file decides: a key left at its default takes the file's value, another must agree with it
FILE_KEYS = ("arch", "depth", "patch_size", "in_chans", "img_size", "num_register_tokens", "layerscale_init", "ffn",
             "qkv_bias")
LAYERSCALE_INIT = 1e-5  # the value the files do not record (only that LayerScale is there): DINOv2's


@dataclass
class InitialModel:
    """The backbone of `model.init` and the heads taken over from it ('head', 'patch_head'; {} = fresh heads)."""

    source: str
    backbone: VisionTransformer
    heads: dict[str, dict[str, Tensor]]

    def start(self, student: MultiCropWrapper, teacher: MultiCropWrapper) -> None:
        """Student and teacher backbones (and the heads the file has) become the file's."""
        state = self.backbone.state_dict()
        for model in (student, teacher):
            load_state_strict(model.backbone, state, f"model.init {self.source}")
            for name, head_state in self.heads.items():
                try:
                    load_state_strict(getattr(model, name), head_state, f"model.init {self.source} ({name})")
                except CheckpointError as err:
                    raise ConfigError(f"model.init: its {name} does not fit head.*: {err}") from err
        log.info("starting from %s: backbone and %s", self.source,
                 f"its {', '.join(self.heads)}" if self.heads else "fresh heads")

    def anchor(self, cfg: Config) -> VisionTransformer:
        """A frozen copy of the initial backbone, built like the student (same position-embedding interpolation,
        no stochastic depth), in eval mode: what the anchoring losses compare the student with."""
        anchor = build_backbone(cfg, drop_path_rate=0.0)
        anchor.load_state_dict(self.backbone.state_dict())
        return anchor.requires_grad_(False).eval()


def resolve_init(cfg: Config) -> tuple[Config, InitialModel | None]:
    """`cfg` with model.* set from the backbone of `model.init`, and that model; (cfg, None) without model.init.

    Errors (ConfigError, naming the key): a missing file, a file that holds no ViT backbone, a model.* key set to
    something the file contradicts, heads in the file whose prototypes or sizes differ from head.*."""
    if not cfg.model.init:
        return cfg, None
    source = cfg.model.init
    if not re.match(r"https?://", source) and not Path(source).expanduser().exists():
        raise ConfigError(f"model.init: {source} does not exist; give a backbone file (e.g. "
                          "dinov2_vits14_pretrain.pth, a dinolab export) or a dinolab run directory")
    try:
        backbone, heads = load_backbone_with_heads(Path(source).expanduser() if "://" not in source else source)
    except (CheckpointError, KeyError, ValueError) as err:
        raise ConfigError(f"model.init: {source} holds no ViT backbone dinolab can start from: {err}. Give a DINO, "
                          "iBOT or DINOv2 release, an HF/timm DINOv2 state dict, a dinolab export or run") from err
    model = _model_from_file(cfg.model, vit_kwargs_of(backbone), source)
    resolved = dataclasses.replace(cfg, model=model)
    validate(resolved)
    return resolved, InitialModel(source, backbone, _heads_to_use(heads, resolved, source))


def _model_from_file(given: ModelConfig, vit: dict, source: str) -> ModelConfig:
    """The file's architecture as a ModelConfig; keys of `given` left at their defaults take the file's values."""
    arch = next((name for name, size in ARCH_SIZES.items()
                 if (size["embed_dim"], size["num_heads"]) == (vit["embed_dim"], vit["num_heads"])), None)
    if arch is None:
        raise ConfigError(f"model.init: {source} is a ViT of width {vit['embed_dim']} with {vit['num_heads']} heads, "
                          f"none of dinolab's architectures ({', '.join(ARCH_SIZES)}); it cannot be trained here")
    if vit["ffn"] == "mlp" and vit["mlp_ratio"] != 4.0:
        raise ConfigError(f"model.init: {source} has an MLP ratio of {vit['mlp_ratio']:g}; dinolab trains ratio 4 only")
    from_file = dict(arch=arch, depth=vit["depth"], patch_size=vit["patch_size"], in_chans=vit["in_chans"],
                     img_size=vit["img_size"], num_register_tokens=vit["num_register_tokens"],
                     layerscale_init=LAYERSCALE_INIT if vit["layerscale_init"] is not None else None,
                     ffn=vit["ffn"], qkv_bias=vit["qkv_bias"])
    defaults, values, conflicts = ModelConfig(), {}, []
    for key in FILE_KEYS:
        mine, theirs = getattr(given, key), from_file[key]
        if mine == getattr(defaults, key):
            values[key] = theirs
        elif key == "layerscale_init" and theirs is not None:
            values[key] = mine  # LayerScale on both sides: its init value does not matter, the file's gammas load
        elif mine != theirs:
            conflicts.append(f"model.{key}={mine} (the file's: {theirs})")
        else:
            values[key] = mine
    if conflicts:
        raise ConfigError(
            f"model.init: {source} has another architecture than the config says: {'; '.join(conflicts)}. The "
            "architecture comes from the file: drop these keys from the recipe and overrides, or set them to the "
            "file's values"
        )
    return dataclasses.replace(given, **values)


def _heads_to_use(heads: dict[str, dict[str, Tensor]], cfg: Config, source: str) -> dict[str, dict[str, Tensor]]:
    """The file's heads this recipe has (a separate iBOT patch head only with loss.ibot_weight > 0 and unshared
    heads), after checking their sizes against head.*; the others are left out, with a log line."""
    h = cfg.head
    wanted = {"head": ("head.out_dim", h.out_dim)}
    if cfg.loss.ibot_weight > 0 and not h.shared:
        wanted["patch_head"] = ("head.patch_out_dim", h.patch_out_dim)
    used = {}
    for name, state in heads.items():
        if name not in wanted:
            log.info("model.init: %s has a separate iBOT patch head; this recipe has none (loss.ibot_weight=0 or "
                     "head.shared=true), so it is not used", source)
            continue
        problems = _head_problems(state, wanted[name], cfg)
        if problems:
            raise ConfigError(f"model.init: {source} has a trained {name} that does not fit: {'; '.join(problems)}. "
                              "Set these keys to the file's values to continue with its heads")
        used[name] = state
    for name in sorted(set(wanted) - set(heads)):
        log.info("model.init: %s has no %s; it starts fresh (optim.freeze_backbone_iterations warms it up)",
                 source, name)
    return used


def _head_problems(state: dict[str, Tensor], out: tuple[str, int], cfg: Config) -> list[str]:
    """How a DINOHead state dict differs from the head the config builds: prototypes, bottleneck, MLP."""
    if "last_layer.weight_v" not in state:
        return [f"no weight-normalized last layer (last_layer.weight_v); its keys: {', '.join(sorted(state)[:6])}"]
    prototypes, bottleneck = state["last_layer.weight_v"].shape
    layers = sorted((int(m[1]), v) for k, v in state.items() if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)))
    found = [(out[0], prototypes, out[1]), ("head.bottleneck_dim", bottleneck, cfg.head.bottleneck_dim),
             ("head.nlayers", len(layers), cfg.head.nlayers)]
    if len(layers) > 1:
        found.append(("head.hidden_dim", layers[0][1].shape[0], cfg.head.hidden_dim))
    return [f"{key}={mine}, the file's has {theirs}" for key, theirs, mine in found if theirs != mine]


class BackboneFreeze:
    """The head warm-up: while `frozen`, the student's backbone gets no update.

    One process: its parameters stop requiring gradients, so the backward pass ends at the heads (cheaper).
    Several (DDP, FSDP): every parameter must keep producing gradients for the collective reductions, so they are
    computed and then dropped. Either way the parameters have no gradient at the optimizer step, and AdamW skips
    a parameter without one entirely: no moment update and no weight decay.
    """

    def __init__(self, backbone: nn.Module, by_requires_grad: bool):
        self.params = [p for p in backbone.parameters() if p.requires_grad]
        self.by_requires_grad = by_requires_grad
        self.frozen = False

    def set(self, frozen: bool) -> None:
        """Freeze or release the backbone for the coming step."""
        if self.by_requires_grad and frozen != self.frozen:
            for p in self.params:
                p.requires_grad_(not frozen)
        self.frozen = frozen

    def drop_gradients(self) -> None:
        """After the backward: while frozen, the backbone's gradients are removed."""
        if self.frozen:
            for p in self.params:
                p.grad = None
