"""Copy detection: do an image's features survive the edits that make a copy (the DINO paper's Copydays test)?

Every image of a dataset gets one edited copy, drawn with a per-image seed: a random crop of 40-100% of its
area resized back, Gaussian blur, brightness and contrast jitter, and JPEG re-encoding at low quality, all
through PIL, all of them applied to every copy with random strengths. The copies are the queries and the
originals the gallery; a copy's only relevant image is its own original, so recall@1 is how often the copy
finds it first and AP is 1 / (the original's rank). DINO's full protocol also adds distractor images and
learns a whitening on them; this is the plain version on [CLS] features.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch import Tensor, nn
from torch.utils.data import Dataset

from dinolab.device import Runtime
from dinolab.eval.features import extract_tokens
from dinolab.eval.retrieval import retrieval
from dinolab.eval.tokens import NO_PREPROCESS, Preprocess


def make_copy(image: Tensor, rng: np.random.Generator) -> Tensor:
    """An edited copy of a uint8 (C, H, W) image, same shape: crop, blur, color jitter, JPEG."""
    channels, h, w = image.shape
    mode = "L" if channels == 1 else "RGB"
    pil = Image.fromarray(image.permute(1, 2, 0).squeeze(2).numpy(), mode)
    area = rng.uniform(0.4, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = min(w, max(1, round(w * np.sqrt(area * aspect))))
    ch = min(h, max(1, round(h * np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    pil = pil.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
    pil = pil.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 1.0) * max(h, w) / 28))
    pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(0.6, 1.4))
    pil = ImageEnhance.Contrast(pil).enhance(rng.uniform(0.6, 1.4))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(rng.integers(10, 50)))
    with Image.open(buffer) as decoded:
        array = np.asarray(decoded.convert(mode))
    return torch.from_numpy(array.copy()).view(h, w, channels).permute(2, 0, 1).contiguous()


class IndexedImages(Dataset):
    """The images of `dataset` labeled by their index, optionally replaced by their edited copies."""

    def __init__(self, dataset: Dataset, copies: bool, seed: int = 0):
        self.dataset, self.copies, self.seed = dataset, copies, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        sample = self.dataset[i]
        if sample is None:
            return None
        image = make_copy(sample[0], np.random.default_rng((self.seed, i))) if self.copies else sample[0]
        return image, i


def copy_detection(
    model: nn.Module, dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0,
    preprocess: Preprocess = NO_PREPROCESS, batch_size: int = 256, runtime: Runtime | None = None, quiet: bool = False,
) -> dict[str, float]:
    """recall@1 and mAP (%) of edited copies retrieving their originals among all of `dataset`."""
    originals, copies = (
        extract_tokens(model, IndexedImages(dataset, copies=flag, seed=seed), mean, std, n_blocks=1,
                       preprocess=preprocess, batch_size=batch_size, runtime=runtime, quiet=quiet)
        for flag in (False, True)
    )
    result = retrieval(copies.embedding, copies.labels, originals.embedding, originals.labels, ks=(1,))
    return {"recall@1": result["recall@1"], "mAP": result["mAP"], "images": result["gallery"]}
