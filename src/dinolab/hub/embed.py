"""Embed every image of a folder with a backbone: batched, with a progress bar, resumable.

Images are found recursively (sorted paths), resized so the shorter side is `image_size`, then
center-cropped to `image_size` x `image_size`. An `image_size` that is not a multiple of the patch size
is rounded down to one (224 with 14 px patches stays 224; 230 becomes 224) and logged.

Features per image, in this column order when several are asked for: 'cls' (the normalized [CLS]
token) and 'patch_mean' (the mean of the normalized patch tokens), each D wide.

Work is written in chunks to `<out>.parts/` next to the output, with a manifest of the file list and
settings; a run that stops (Ctrl-C, crash) continues from its last finished chunk when started again with
the same arguments. The chunks are merged into `<out>` at the end and removed. Outputs: `.npy`, an
(N, F) float32 array with one row per file, listed in `<out>.paths.txt`; or `.parquet` (pyarrow, the
export extra), a `path` column plus one list<float> column per feature. An unreadable image gets a row
of NaN, so rows and files stay aligned; the count is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from dinolab.config import IMAGENET_MEAN, IMAGENET_STD
from dinolab.data.datasets import ImageFolder
from dinolab.data.transforms import normalize_uint8
from dinolab.device import Runtime, resolve
from dinolab.hub.export import require_export_extra
from dinolab.io import atomic_path, atomic_write_text
from dinolab.models.vit import VisionTransformer
from dinolab.progress import progress

log = logging.getLogger(__name__)

FEATURES = ("cls", "patch_mean")


def _collate_keep_positions(samples: list[tuple[Tensor, int] | None]) -> tuple[Tensor, list[int], int]:
    """Readable images stacked, their positions in the batch (unreadable ones yield None), the batch size."""
    positions = [i for i, s in enumerate(samples) if s is not None]
    images = torch.stack([samples[i][0] for i in positions]) if positions else torch.empty(0, dtype=torch.uint8)
    return images, positions, len(samples)


def _features(model: VisionTransformer, x: Tensor, features: tuple[str, ...]) -> Tensor:
    out = model.forward_features(x)
    parts = {"cls": out["x_norm_clstoken"], "patch_mean": out["x_norm_patchtokens"].mean(dim=1)}
    return torch.cat([parts[f] for f in features], dim=1)


def embed_folder(
    model: VisionTransformer,
    folder: str | Path,
    out: str | Path,
    image_size: int = 224,
    features: tuple[str, ...] = ("cls",),
    batch_size: int = 64,
    chunk_size: int = 1024,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    runtime: Runtime | None = None,
    num_workers: int = 0,
    resume: bool = True,
    quiet: bool = False,
) -> Path:
    """Embed the images under `folder` into `out` (.npy or .parquet); see the module docstring."""
    out = Path(out)
    if out.suffix not in (".npy", ".parquet"):
        raise ValueError(f"--out must end in .npy or .parquet, got {out.name}")
    if out.suffix == ".parquet":
        require_export_extra("pyarrow")
    unknown = sorted(set(features) - set(FEATURES))
    if unknown or not features:
        raise ValueError(f"unknown features {unknown}; choose from {', '.join(FEATURES)}")
    p = model.patch_size
    crop = image_size // p * p
    if crop == 0:
        raise ValueError(f"image_size {image_size} is smaller than the patch size {p}")
    if crop != image_size:
        log.info("image size %d is not a multiple of the patch size %d: center-cropping to %d", image_size, p, crop)
    dataset = ImageFolder(folder, size=crop, channels=model.in_chans)
    parts_dir = _prepare_parts(out, dataset.files, dict(image_size=crop, features=list(features), mean=list(mean),
                                                       std=list(std)), resume)
    runtime = runtime or resolve()
    model = model.to(runtime.device).eval()
    width = model.embed_dim * len(features)
    starts = range(0, len(dataset), chunk_size)
    done = [s for s in starts if (parts_dir / f"{s:09d}.npy").is_file()]
    bar = progress(total=len(dataset), initial=sum(min(chunk_size, len(dataset) - s) for s in done), desc="embed",
                   unit="img", disable=quiet)
    for start in starts:
        part = parts_dir / f"{start:09d}.npy"
        if part.is_file():
            continue
        indices = range(start, min(start + chunk_size, len(dataset)))
        rows = np.full((len(indices), width), np.nan, dtype=np.float32)
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=_collate_keep_positions)
        offset = 0
        for images, positions, count in loader:
            if positions:
                x = normalize_uint8(images, mean, std).to(runtime.device)
                with torch.no_grad(), runtime.autocast():
                    rows[[offset + i for i in positions]] = _features(model, x, features).float().cpu().numpy()
            offset += count
            bar.update(count)
        with atomic_path(part) as tmp, open(tmp, "wb") as f:
            np.save(f, rows)
    bar.close()
    _merge(parts_dir, out, dataset.files, Path(folder), list(features), model.embed_dim)
    return out


def _prepare_parts(out: Path, files: list[Path], settings: dict, resume: bool) -> Path:
    parts_dir = out.with_name(out.name + ".parts")
    manifest = {"files_sha1": hashlib.sha1("\n".join(map(str, files)).encode()).hexdigest(), "count": len(files),
                **settings}
    manifest_path = parts_dir / "manifest.json"
    if parts_dir.exists():
        previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if not resume or previous != manifest:
            if resume:
                log.info("%s holds work for other files or settings: starting over", parts_dir)
            shutil.rmtree(parts_dir)
        else:
            log.info("resuming from %s", parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(manifest), manifest_path)
    return parts_dir


def _merge(parts_dir: Path, out: Path, files: list[Path], root: Path, features: list[str], dim: int) -> None:
    rows = np.concatenate([np.load(p) for p in sorted(parts_dir.glob("[0-9]*.npy"))])
    unreadable = int(np.isnan(rows[:, 0]).sum())
    if unreadable:
        log.warning("%d of %d images could not be read: their rows are NaN", unreadable, len(rows))
    paths = [str(f.relative_to(root)) for f in files]
    if out.suffix == ".npy":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, rows)
        atomic_write_text("\n".join(paths) + "\n", out.with_name(out.name + ".paths.txt"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"path": pa.array(paths)}
        for i, name in enumerate(features):
            columns[name] = pa.array(list(rows[:, i * dim : (i + 1) * dim]), type=pa.list_(pa.float32()))
        with atomic_path(out) as tmp:
            pq.write_table(pa.table(columns), tmp)
    shutil.rmtree(parts_dir)
