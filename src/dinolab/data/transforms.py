"""DINO multi-crop augmentation on whole batches of tensors.

The official code augments each crop of each image with PIL, one at a time, which on a small
CPU box costs as much as the model step. Here every operation runs on the (B, C, H, W) batch at
once, with per-sample random parameters: random-resized crops through `roi_align`, flips, color
jitter, grayscale, Gaussian blur, solarization, normalization. Randomness comes from an explicit
generator so a batch's crops depend only on (seed, epoch, batch index), not on worker timing.

Differences from the PIL recipe, all deliberate: crops are resampled bilinearly with area
averaging (PIL: bicubic); the order of the four color-jitter operations is drawn once per batch
(torchvision: per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from dinolab.config import NUM_GLOBAL_CROPS

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class CropSpec:
    """One view of the multi-crop recipe."""

    size: int
    scale: tuple[float, float]
    blur_prob: float
    solarize_prob: float = 0.0


def dino_crop_specs(
    global_size: int,
    global_scale: tuple[float, float],
    local_number: int,
    local_size: int,
    local_scale: tuple[float, float],
    solarize_prob: float = 0.2,
) -> list[CropSpec]:
    """The DINO paper's views: NUM_GLOBAL_CROPS = 2 global (blur always / rarely + solarize), n local (blur
    half the time)."""
    global_specs = [
        CropSpec(global_size, global_scale, blur_prob=1.0),
        CropSpec(global_size, global_scale, blur_prob=0.1, solarize_prob=solarize_prob),
    ]
    assert len(global_specs) == NUM_GLOBAL_CROPS
    return global_specs + [CropSpec(local_size, local_scale, blur_prob=0.5) for _ in range(local_number)]


@dataclass(frozen=True)
class Rows:
    """Which rows of a batch of `total` images are at hand: a process's slice of a multi-process run's
    global batch, or (a tensor of positions) the images of it that could be read."""

    total: int
    index: slice | Tensor

    @staticmethod
    def all(total: int) -> Rows:
        return Rows(total, slice(0, total))


@dataclass(frozen=True)
class Draw:
    """Random draws for a whole batch, returned for `rows` only: the values a row gets do not depend on
    how the batch is split between processes."""

    generator: torch.Generator
    rows: Rows

    def rand(self) -> Tensor:
        return torch.rand(self.rows.total, generator=self.generator)[self.rows.index]

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return torch.empty(self.rows.total, *shape).uniform_(low, high, generator=self.generator)[self.rows.index]


class MultiCropAugmentation:
    """uint8 batch (B, C, H, W) -> list of normalized float crops, one (B, C, s, s) tensor per view."""

    def __init__(
        self,
        specs: list[CropSpec],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        color_jitter: bool = True,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        hflip: bool = True,
    ):
        self.specs = specs
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.color_jitter = color_jitter
        self.blur_sigma = blur_sigma
        self.hflip = hflip

    def __call__(self, images: Tensor, generator: torch.Generator, rows: Rows | None = None) -> list[Tensor]:
        """Crops of `images`. With `rows`, `images` are the rows `rows.index` of a batch of `rows.total`: the
        random draws are made for the whole batch and these rows take theirs, so each process of a
        multi-process run gets exactly its slice of the crops one process would make."""
        draw = Draw(generator, rows or Rows.all(len(images)))
        x = images.float().div_(255)
        return [self.view(x, spec, draw) for spec in self.specs]

    def view(self, x: Tensor, spec: CropSpec, draw: Draw) -> Tensor:
        out = random_resized_crop(x, spec.size, spec.scale, draw)
        flip = draw.rand() < 0.5  # drawn even when off, so every later draw is the same with and without
        if self.hflip:
            out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        if self.color_jitter:
            out = color_jitter(out, draw, p=0.8)
            out = random_grayscale(out, draw, p=0.2)
        out = gaussian_blur(out, draw, p=spec.blur_prob, sigma=self.blur_sigma)
        if spec.solarize_prob > 0:
            solarize = (draw.rand() < spec.solarize_prob).view(-1, 1, 1, 1)
            out = torch.where(solarize & (out >= 128 / 255), 1.0 - out, out)
        return normalize(out, self.mean, self.std)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean.to(x.device)) / std.to(x.device)


def normalize_uint8(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (B, C, H, W) images -> float, scaled to [0, 1] and normalized per channel: a model's input."""
    shape = (1, -1, 1, 1)
    return normalize(images.float().div_(255), torch.tensor(mean).view(shape), torch.tensor(std).view(shape))


def sample_crop_boxes(
    draw: Draw, h: int, w: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3), tries: int = 10
) -> Tensor:
    """RandomResizedCrop's box sampling for a batch at once -> (b, 4) boxes x1, y1, x2, y2 in pixels."""
    area = h * w
    target = area * draw.uniform(scale[0], scale[1], tries)
    aspect = torch.exp(draw.uniform(math.log(ratio[0]), math.log(ratio[1]), tries))
    b = len(target)
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    rows = torch.arange(b)
    cw, ch = cw[rows, first.clamp(min=0)], ch[rows, first.clamp(min=0)]
    # fallback as torchvision: the largest centered crop within the ratio range
    fallback = first < 0
    cw = torch.where(fallback, torch.tensor(float(min(w, round(h * ratio[1])))), cw)
    ch = torch.where(fallback, torch.tensor(float(min(h, round(w / ratio[0])))), ch)
    x1 = torch.floor(draw.rand() * (w - cw + 1))
    y1 = torch.floor(draw.rand() * (h - ch + 1))
    x1 = torch.where(fallback, ((w - cw) / 2).floor(), x1)
    y1 = torch.where(fallback, ((h - ch) / 2).floor(), y1)
    return torch.stack((x1, y1, x1 + cw, y1 + ch), dim=1)


def random_resized_crop(x: Tensor, size: int, scale: tuple[float, float], draw: Draw) -> Tensor:
    b, _, h, w = x.shape
    boxes = sample_crop_boxes(draw, h, w, scale)
    rois = torch.cat((torch.arange(b, dtype=x.dtype).unsqueeze(1), boxes.to(x.dtype)), dim=1)
    return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def grayscale(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, g_, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g_ + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def color_jitter(
    x: Tensor, draw: Draw, p: float = 0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
) -> Tensor:
    """torchvision's ColorJitter with per-sample factors; samples not drawn (1 - p) get identity factors."""
    apply = (draw.rand() < p).view(-1, 1, 1, 1)

    def factor(amount: float, center: float) -> Tensor:
        f = draw.uniform(center - amount, center + amount, 1, 1, 1)
        return torch.where(apply, f, torch.full_like(f, center))

    fb, fc, fs, fh = factor(brightness, 1.0), factor(contrast, 1.0), factor(saturation, 1.0), factor(hue, 0.0)
    for op in torch.randperm(4, generator=draw.generator).tolist():  # one order for the whole batch
        if op == 0:
            x = (x * fb).clamp_(0, 1)
        elif op == 1:
            m = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - m) * fc + m).clamp_(0, 1)
        elif op == 2 and x.shape[1] == 3:
            gray = grayscale(x)
            x = ((x - gray) * fs + gray).clamp_(0, 1)
        elif op == 3 and x.shape[1] == 3:
            x = adjust_hue(x, fh)
    return x


def random_grayscale(x: Tensor, draw: Draw, p: float = 0.2) -> Tensor:
    if x.shape[1] == 1:
        return x
    pick = (draw.rand() < p).view(-1, 1, 1, 1)
    return torch.where(pick, grayscale(x).expand_as(x), x)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by `shift` (fraction of a turn, per sample) through HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    pv, qv, tv = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack(
        [
            torch.stack((v, tv, pv)),
            torch.stack((qv, v, pv)),
            torch.stack((pv, v, tv)),
            torch.stack((pv, qv, v)),
            torch.stack((tv, pv, v)),
            torch.stack((v, pv, qv)),
        ]
    )  # (6, 3, B, H, W)
    out = torch.gather(choices, 0, i.unsqueeze(0).unsqueeze(0).expand(1, 3, *i.shape)).squeeze(0)
    return out.permute(1, 0, 2, 3).contiguous()


def gaussian_blur(x: Tensor, draw: Draw, p: float, sigma: tuple[float, float]) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma ~ U(sigma); samples not drawn keep a delta kernel."""
    if p <= 0:
        return x
    b, c, h, w = x.shape
    apply = draw.rand() < p
    sig = draw.uniform(sigma[0], sigma[1])
    radius = min(int(math.ceil(3 * sigma[1])), (min(h, w) - 1) // 2)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t.view(1, -1) / sig.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    delta = (t == 0).to(x.dtype).expand_as(kernel)
    kernel = torch.where(apply.view(-1, 1), kernel, delta).repeat_interleave(c, dim=0)  # (B*C, k)
    k = kernel.shape[1]
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)
