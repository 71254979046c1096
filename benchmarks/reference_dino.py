"""The baseline of the training-step benchmark: one DINO step written the way the original facebookresearch/dino
code works, deliberately unoptimized, so that dinolab's numbers say what its optimizations buy.

As in main_dino.py / vision_transformer.py / utils.py: attention written out as softmax(QK^T)V, the position
embedding interpolated on every forward, a weight_norm parametrization on the last layer, the loss as a double
loop over crop pairs, Python loops for gradient clipping and the EMA update, and per-crop PIL augmentation
(torchvision v1 transforms) in a DataLoader. Independent of dinolab: the benchmark configuration comes in as a
`RefSettings`. Any change here changes the baseline every stored result was compared against.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from harness import Phase, no_phase
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor, nn


@dataclass(frozen=True)
class RefSettings:
    """The benchmark configuration, as the reference's command-line arguments would carry it."""

    img_size: int  # the position embedding's size (the global crops')
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    drop_path_rate: float
    out_dim: int
    hidden_dim: int
    bottleneck_dim: int
    global_crops_size: int
    global_crops_scale: tuple[float, float]
    local_crops_number: int
    local_crops_size: int
    local_crops_scale: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    student_temp: float
    center_momentum: float
    clip_grad: float
    momentum_teacher: float
    # the point of the schedules the step runs at
    lr: float
    weight_decay: float
    teacher_temp: float

    @property
    def n_crops(self) -> int:
        return 2 + self.local_crops_number


# ---------------------------------------------------------------------------------------------------------------------
# Model: vision_transformer.py's ViT and DINOHead, utils.MultiCropWrapper
# ---------------------------------------------------------------------------------------------------------------------


def ref_drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    noise = keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
    return x.div(keep) * noise.floor_()


class RefAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + ref_drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + ref_drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class RefViT(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, num_heads: int, drop_path_rate: float):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(RefBlock(dim, num_heads, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: Tensor, h: int, w: int) -> Tensor:
        # Always resampled (the original takes this path for every local crop; here also at the native size).
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(math.sqrt(patch_pos.shape[1]))
        grid = patch_pos.reshape(1, side, side, x.shape[-1]).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h // self.patch_size, w // self.patch_size), mode="bicubic")
        return torch.cat((cls_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class RefDINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        if norm_last_layer:
            magnitude.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class RefMultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[Tensor]) -> Tensor:
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, output = 0, torch.empty(0, device=crops[0].device)
        for end in ends.tolist():
            output = torch.cat((output, self.backbone(torch.cat(crops[start:end]))))
            start = end
        return self.head(output)


def ref_model(s: RefSettings, drop_path_rate: float) -> RefMultiCropWrapper:
    backbone = RefViT(s.img_size, s.patch_size, s.embed_dim, s.depth, s.num_heads, drop_path_rate)
    return RefMultiCropWrapper(backbone, RefDINOHead(s.embed_dim, s.out_dim, s.hidden_dim, s.bottleneck_dim))


# ---------------------------------------------------------------------------------------------------------------------
# Loss and update: main_dino.DINOLoss, utils.get_params_groups / clip_gradients, the EMA loop of train_one_epoch
# ---------------------------------------------------------------------------------------------------------------------


class RefDINOLoss(nn.Module):
    def __init__(self, out_dim: int, n_crops: int, student_temp: float, center_momentum: float):
        super().__init__()
        self.n_crops, self.student_temp, self.center_momentum = n_crops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: Tensor, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        student_out = (student_output / self.student_temp).chunk(self.n_crops)
        teacher_out = F.softmax((teacher_output - self.center) / teacher_temp, dim=-1).detach().chunk(2)
        total, n_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                total += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_output)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def ref_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or len(p.shape) == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def ref_clip_gradients(model: nn.Module, clip: float) -> None:
    for p in model.parameters():
        if p.grad is not None:
            coef = clip / (p.grad.data.norm(2) + 1e-6)
            if coef < 1:
                p.grad.data.mul_(coef)


def ref_ema(student: nn.Module, teacher: nn.Module, m: float) -> None:
    with torch.no_grad():
        for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
            pt.data.mul_(m).add_((1 - m) * ps.detach().data)


class RefStep:
    """One iteration of the original main_dino.train_one_epoch (single process, fp32 or bf16 autocast)."""

    def __init__(self, settings: RefSettings, precision: str):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"reference precision must be fp32 or bf16, got {precision}")
        self.s, self.precision = settings, precision
        torch.manual_seed(0)
        self.student, self.teacher = ref_model(settings, settings.drop_path_rate), ref_model(settings, 0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.dino_loss = RefDINOLoss(settings.out_dim, settings.n_crops, settings.student_temp,
                                     settings.center_momentum)
        self.optimizer = torch.optim.AdamW(ref_param_groups(self.student))
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = settings.lr
            if i == 0:
                group["weight_decay"] = settings.weight_decay
        self.student.train()

    def __call__(self, crops: list[Tensor], phase: Phase = no_phase) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            with phase("teacher_forward"):
                teacher_output = self.teacher(crops[:2])
            with phase("student_forward"):
                student_output = self.student(crops)
            with phase("loss"):
                loss = self.dino_loss(student_output, teacher_output, self.s.teacher_temp)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        with phase("backward"):
            self.optimizer.zero_grad()
            loss.backward()
        with phase("clip"):
            ref_clip_gradients(self.student, self.s.clip_grad)
        with phase("optimizer"):
            self.optimizer.step()
        with phase("ema"):
            ref_ema(self.student, self.teacher, self.s.momentum_teacher)
        return loss.item()


# ---------------------------------------------------------------------------------------------------------------------
# Data: main_dino.DataAugmentationDINO and torchvision's ImageFolder, one image and one crop at a time
# ---------------------------------------------------------------------------------------------------------------------


class RefGaussianBlur:
    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class RefSolarization:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class RefMultiCrop:
    """The original DataAugmentationDINO: every crop of every image through PIL, one at a time."""

    def __init__(self, s: RefSettings):
        from torchvision import transforms as T

        self.local_crops_number = s.local_crops_number
        bicubic = T.InterpolationMode.BICUBIC
        flip_and_color_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        normalize = T.Compose([T.ToTensor(), T.Normalize(s.mean, s.std)])
        self.global1 = T.Compose([
            T.RandomResizedCrop(s.global_crops_size, scale=s.global_crops_scale, interpolation=bicubic),
            flip_and_color_jitter, RefGaussianBlur(1.0), normalize,
        ])
        self.global2 = T.Compose([
            T.RandomResizedCrop(s.global_crops_size, scale=s.global_crops_scale, interpolation=bicubic),
            flip_and_color_jitter, RefGaussianBlur(0.1), RefSolarization(0.2), normalize,
        ])
        self.local = T.Compose([
            T.RandomResizedCrop(s.local_crops_size, scale=s.local_crops_scale, interpolation=bicubic),
            flip_and_color_jitter, RefGaussianBlur(0.5), normalize,
        ])

    def __call__(self, img: Image.Image) -> list[Tensor]:
        return [self.global1(img), self.global2(img)] + [self.local(img) for _ in range(self.local_crops_number)]


class RefImageFolder(torch.utils.data.Dataset):
    """torchvision.datasets.ImageFolder's behaviour: class = subfolder, PIL loader, convert('RGB'), transform."""

    def __init__(self, root: str | Path, transform: RefMultiCrop):
        self.files = sorted(p for p in Path(root).rglob("*.jpg"))
        classes = sorted({p.parent.name for p in self.files})
        self.labels = [classes.index(p.parent.name) for p in self.files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), self.labels[i]


def ref_crops(s: RefSettings, images: list[Image.Image]) -> list[Tensor]:
    """The crops of a batch of in-memory images, as the reference's loader would collate them (seeded)."""
    random.seed(0)
    torch.manual_seed(0)
    aug = RefMultiCrop(s)
    per_image = [aug(img) for img in images]
    return [torch.stack([crops[v] for crops in per_image]) for v in range(s.n_crops)]


def ref_loader(s: RefSettings, root: str | Path, batch: int) -> torch.utils.data.DataLoader:
    """main_dino's DataLoader over an image folder, with one worker (what the benchmark gives both sides)."""
    return torch.utils.data.DataLoader(
        RefImageFolder(root, RefMultiCrop(s)), batch_size=batch, shuffle=True, num_workers=1, drop_last=True,
        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0),
    )
