"""`dinolab curate`: embed a pool of images, deduplicate it, drop what is too close to evaluation sets,
retrieve what is near a curated seed set, balance it by hierarchical k-means; write the file list and a
report of every stage.

Embeddings are the normalized [CLS] token of any backbone `dinolab.hub.load_model` reads, computed by
`dinolab.hub.embed.embed_folder` (chunked, resumable) into a work folder next to the output, and reused
there by later runs on the same files with the same model and settings, so trying other thresholds costs
no second pass over the images. The readable rows are then written once more, L2-normalized, beside them; the
stages read that file memory-mapped, a block of rows at a time, and pass the rows left after each stage down
as indices (`search.Rows`), so no stage holds all embeddings at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dinolab.curate.balance import balanced_sample, hierarchical_kmeans
from dinolab.curate.dedup import DEFAULT_THRESHOLD, NEIGHBORS, deduplicate, too_close
from dinolab.curate.retrieve import PER_IMAGE_MIN_SEEDS, retrieve_clusters, retrieve_per_image
from dinolab.curate.search import NPROBE, Rows, knn, normalized
from dinolab.data.datasets import ImageFolder
from dinolab.device import Runtime
from dinolab.hub import LoadedModel, load_model
from dinolab.hub.embed import embed_folder
from dinolab.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

LOAD_BLOCK = 65_536  # embeddings normalized per step when loaded
EXAMPLES = 10  # duplicate groups, decontaminated images and seed images shown in the report
GRID_COLUMNS = 8  # images per row of a report picture
THUMBNAIL = 64  # pixels, the side of each image in a report picture
GRID_GAP = 4
PICTURES = ("duplicates", "excluded", "retrieved")  # the report's example rows, each drawn as a picture


@dataclass
class CurateSettings:
    """What each stage does; the defaults run deduplication and decontamination only."""

    dedup_threshold: float = DEFAULT_THRESHOLD
    dedup_neighbors: int = NEIGHBORS  # the k of the k-NN graph near-duplicates are read from
    exclude_threshold: float = DEFAULT_THRESHOLD
    retrieve: str = "auto"  # with a seed set: 'image', 'cluster', or 'auto' (image from PER_IMAGE_MIN_SEEDS on)
    neighbors: int = 4  # per-image retrieval: pool images per seed image
    retrieval_clusters: int | None = None  # cluster retrieval: pool clusters (default: sqrt of the pool size)
    per_cluster: int | None = None  # cluster retrieval: images drawn from each picked cluster (default: all)
    balance: str | None = None  # 'kmeans': hierarchical k-means balancing to `target`
    clusters: tuple[int, ...] = (1000, 100)  # balance: cluster counts, finest level first
    target: int | None = None
    search: str = "auto"  # 'auto' (index by pool size), 'exact', 'faiss', 'flat', 'ivf', 'ivfpq': see curate.search
    nprobe: int = NPROBE  # inverted lists an IVF search visits per query
    random_seed: int = 0

    def check(self, has_seed: bool) -> None:
        """Errors that need no images, raised before any embedding is done."""
        if self.retrieve not in ("auto", "image", "cluster"):
            raise ValueError(f"retrieval is 'auto', 'image' or 'cluster', got {self.retrieve!r}")
        if self.balance not in (None, "kmeans"):
            raise ValueError(f"the only balancing is 'kmeans' (hierarchical k-means), got {self.balance!r}")
        if (self.balance is None) != (self.target is None):
            raise ValueError("--balance kmeans and --target N go together: say how many images to keep")
        if self.target is not None and self.target < 1:
            raise ValueError(f"--target must be a positive number of images, got {self.target}")
        if list(self.clusters) != sorted(set(self.clusters), reverse=True) or min(self.clusters) < 1:
            raise ValueError(f"--clusters go from the finest level to the coarsest, each one smaller, e.g. "
                             f"1000,100; got {','.join(map(str, self.clusters))}")
        if self.nprobe < 1:
            raise ValueError(f"--nprobe must be at least 1 inverted list, got {self.nprobe}")
        if self.retrieve != "auto" and not has_seed:
            raise ValueError(f"--retrieve {self.retrieve} retrieves with a seed set: pass --seed FOLDER")


@dataclass
class Embedded:
    """A folder's readable images: their paths and L2-normalized embeddings (one row each, memory-mapped)."""

    paths: list[str]
    x: np.ndarray
    unreadable: list[str] = field(default_factory=list)


@dataclass
class CurateReport:
    sizes: dict[str, int] = field(default_factory=dict)  # images left after each stage, in order
    seconds: dict[str, float] = field(default_factory=dict)
    duplicate_groups: int = 0
    duplicate_examples: list[list[str]] = field(default_factory=list)  # kept image first
    excluded_examples: list[list[str]] = field(default_factory=list)  # [pool image, evaluation image]
    retrieved_examples: list[list[str]] = field(default_factory=list)  # a seed image, then its nearest retrieved
    unreadable: list[str] = field(default_factory=list)
    retrieval: str | None = None
    settings: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        stages = ", ".join(f"{name} {n} ({self.seconds.get(name, 0):.1f} s)" for name, n in self.sizes.items())
        return (f"{stages}; {self.duplicate_groups} duplicate groups, {len(self.unreadable)} unreadable images "
                f"skipped")


def output_paths(out: Path) -> dict[str, Path]:
    """Where a run writes: the list, the report, all duplicate groups, the embedding work folder, and the
    report's pictures (written when there is something to show)."""
    stem = out.with_suffix("") if out.suffix == ".txt" else out
    return {"list": out, "report": Path(f"{stem}.report.json"), "duplicates": Path(f"{stem}.duplicates.txt"),
            "work": Path(f"{stem}.work"), **{f"{name}_picture": Path(f"{stem}.{name}.png") for name in PICTURES}}


def write_picture(rows: Sequence[Sequence[str]], path: Path) -> Path:
    """The images of `rows` as one picture, a row each: its first image (the kept image of a duplicate group,
    the pool image that matched an evaluation image, a seed image), a gap, then the others, for judging by eye
    what a threshold or a seed set does. Images that cannot be read stay blank."""
    step, columns = THUMBNAIL + GRID_GAP, min(GRID_COLUMNS, max(map(len, rows)))
    picture = Image.new("RGB", (columns * step + GRID_GAP * 3, len(rows) * step), "white")
    for r, row in enumerate(rows):
        for c, image_path in enumerate(row[:columns]):
            try:
                with Image.open(image_path) as image:
                    tile = ImageOps.pad(image.convert("RGB"), (THUMBNAIL, THUMBNAIL), color="white")
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
            picture.paste(tile, (c * step + (GRID_GAP * 3 if c else 0), r * step))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def embed_images(loaded: LoadedModel, weights: str, folder: Path, role: str, work: Path, image_size: int,
                 batch_size: int, runtime: Runtime | None, quiet: bool) -> Embedded:
    """The embeddings of `folder` (a pool, seed or evaluation set), from `work` when an earlier run with the
    same files, model (`weights`: its `weights_digest`) and settings left them there."""
    try:
        files = ImageFolder(folder, size=image_size).files
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{role} folder: {err}") from None
    cfg = loaded.config
    key = json.dumps({"files": [str(f) for f in files], "model": weights, "image_size": image_size,
                      "mean": list(cfg.data.mean), "std": list(cfg.data.std)})
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    npy = work / f"{role}-{digest}.npy"
    if not (npy.is_file() and Path(f"{npy}.paths.txt").is_file()):
        embed_folder(loaded.backbone, folder, npy, image_size=image_size, batch_size=batch_size, mean=cfg.data.mean,
                     std=cfg.data.std, runtime=runtime, quiet=quiet)
    else:
        log.info("%s embeddings from %s", role, npy)
    rows = np.load(npy, mmap_mode="r")
    paths = [str(Path(folder) / p) for p in Path(f"{npy}.paths.txt").read_text().splitlines()]
    blocks = [slice(start, start + LOAD_BLOCK) for start in range(0, len(rows), LOAD_BLOCK)]
    readable = np.concatenate([~np.isnan(rows[b]).any(axis=1) for b in blocks])
    if not readable.any():
        raise ValueError(f"none of the {len(paths)} images under {role} folder {folder} could be read")
    unit = npy.with_suffix(".normalized.npy")
    if not unit.is_file():
        write_normalized(rows, readable, unit)
    return Embedded([p for p, ok in zip(paths, readable, strict=True) if ok], np.load(unit, mmap_mode="r"),
                    [p for p, ok in zip(paths, readable, strict=True) if not ok])


def write_normalized(rows: np.ndarray, readable: np.ndarray, path: Path) -> None:
    """The `readable` rows of `rows`, L2-normalized, as the .npy `path`, a block at a time (never all in memory),
    written atomically: the stages then read it memory-mapped."""
    with atomic_path(path, needed_bytes=int(readable.sum()) * rows.shape[1] * 4) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(int(readable.sum()), rows.shape[1]))
        done = 0
        for start in range(0, len(rows), LOAD_BLOCK):
            part = normalized(rows[start:start + LOAD_BLOCK][readable[start:start + LOAD_BLOCK]])
            out[done:done + len(part)], done = part, done + len(part)
        out.flush()
        del out


def weights_digest(loaded: LoadedModel) -> str:
    """A hash of the backbone's weights: cached embeddings are only reused with the very same model."""
    h = hashlib.sha1()
    for name, tensor in loaded.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def check_symlink_folder(folder: Path) -> None:
    """Refuse a --symlinks folder that holds anything but symlinks (and folders): those would be trained on too."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--symlinks {folder} is a file: name a folder to create (or an earlier run's)")
    others = [p for p in folder.rglob("*") if not p.is_symlink() and not p.is_dir()] if folder.exists() else []
    if others:
        raise ValueError(f"--symlinks {folder} holds files that are not symlinks (e.g. {others[0]}), which would "
                         f"be trained on with the curated images: choose a new or empty folder")


def write_symlinks(paths: Sequence[str], pool: Path, folder: Path) -> None:
    """`folder` as a folder of symlinks to `paths` (all under `pool`, absolute), each at its path relative to
    `pool`, so tools that take a folder (data.path=, eval) see exactly the curated images, class subfolders
    kept. Links an earlier run left there are removed first: the folder always matches the list."""
    check_symlink_folder(folder)
    if folder.exists():
        for old in folder.rglob("*"):
            if old.is_symlink():
                old.unlink()
    for path in paths:
        link = folder / Path(path).relative_to(pool)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)


def _stage_done(report: CurateReport, name: str, rows: np.ndarray, started: float) -> np.ndarray:
    """Record the size and duration of the stage that started at `started` and left `rows` (pool row indices).
    Each stage below returns (rows, started)."""
    report.seconds[name] = round(time.perf_counter() - started, 3)
    report.sizes[name] = len(rows)
    log.info("%s: %d images left", name, len(rows))
    return rows


def _deduplicate(data: Embedded, settings: CurateSettings, report: CurateReport,
                 groups_file: Path) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    log.info("deduplicating %d images: cosine >= %g among each one's %d nearest", len(data.paths),
             settings.dedup_threshold, settings.dedup_neighbors)
    dedup = deduplicate(data.x, settings.dedup_threshold, settings.dedup_neighbors, settings.search, settings.nprobe)
    report.duplicate_groups = len(dedup.groups)
    report.duplicate_examples = [[data.paths[i] for i in g] for g in dedup.groups[:EXAMPLES]]
    atomic_write_text("".join("\t".join(data.paths[i] for i in g) + "\n" for g in dedup.groups), groups_file)
    return dedup.keep, started


def _decontaminate(data: Embedded, rows: np.ndarray, references: list[Embedded], settings: CurateSettings,
                   report: CurateReport) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    ref_paths = [p for r in references for p in r.paths]
    close, nearest = too_close(Rows(data.x, rows), [r.x for r in references], settings.exclude_threshold,
                               settings.search, settings.nprobe)
    if close.all():
        raise ValueError(f"all {len(rows)} pool images are within --exclude-threshold "
                         f"{settings.exclude_threshold} of an --exclude image: raise it, or check the folders")
    report.excluded_examples = [[data.paths[rows[i]], ref_paths[nearest[i]]] for i in np.flatnonzero(close)[:EXAMPLES]]
    return rows[~close], started


def _retrieve(data: Embedded, rows: np.ndarray, seeds: Embedded, settings: CurateSettings,
              report: CurateReport) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    mode = settings.retrieve
    if mode == "auto":
        mode = "image" if len(seeds.paths) >= PER_IMAGE_MIN_SEEDS else "cluster"
    report.retrieval = mode
    log.info("retrieving from %d pool images with %d seed images (%s retrieval)", len(rows), len(seeds.paths), mode)
    if mode == "image":
        kept = rows[retrieve_per_image(Rows(data.x, rows), seeds.x, settings.neighbors, settings.search,
                                       settings.nprobe)]
    else:
        clusters = min(settings.retrieval_clusters or max(1, round(len(rows) ** 0.5)), len(rows))
        kept = rows[retrieve_clusters(Rows(data.x, rows), seeds.x, clusters, settings.per_cluster, settings.search,
                                      settings.random_seed)]
    nearest = knn(seeds.x[:EXAMPLES], Rows(data.x, kept), GRID_COLUMNS - 1, "exact")[1]  # what a few seeds brought
    report.retrieved_examples = [[seeds.paths[s], *(data.paths[kept[j]] for j in row)] for s, row in enumerate(nearest)]
    return kept, started


def _balance(data: Embedded, rows: np.ndarray, settings: CurateSettings,
             report: CurateReport) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    if settings.target > len(rows):
        raise ValueError(f"--target {settings.target} is more than the {len(rows)} images left after "
                         f"{list(report.sizes)[-1]}: lower --target")
    levels = sorted({min(k, len(rows)) for k in settings.clusters}, reverse=True)  # no more clusters than images
    log.info("balancing %d images to %d: hierarchical k-means with %s clusters", len(rows), settings.target,
             ",".join(map(str, levels)))
    labels = hierarchical_kmeans(Rows(data.x, rows), levels, settings.search, settings.random_seed)
    return rows[balanced_sample(labels, settings.target, settings.random_seed)], started


def curate(
    pool: str | Path,
    out: str | Path,
    checkpoint: str | Path,
    seed: str | Path | None = None,
    exclude: Sequence[str | Path] = (),
    settings: CurateSettings | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    runtime: Runtime | None = None,
    arch: str | None = None,
    entry: str | None = None,
    quiet: bool = False,
    symlinks: str | Path | None = None,
) -> CurateReport:
    """Curate the images under `pool` into the file list `out` (one absolute path per line, what
    `data.file_list=` reads); see the module docstring. Also writes `<out stem>.report.json`,
    `<out stem>.duplicates.txt` (every group, kept image first), keeps the embeddings in `<out stem>.work/`
    and, with `symlinks`, makes that folder a folder of symlinks to the curated images."""
    settings = settings or CurateSettings()
    settings.check(seed is not None)
    out, pool = Path(out), Path(pool).absolute()  # absolute: the list stays valid wherever it is read from
    files = output_paths(out)
    if symlinks is not None:  # checked before any work
        files["symlinks"] = Path(symlinks)
        check_symlink_folder(files["symlinks"])
    report = CurateReport(settings=asdict(settings),
                          outputs={k: str(v) for k, v in files.items() if not k.endswith("_picture")})
    loaded = load_model(checkpoint, arch=arch, entry=entry)
    size = image_size or loaded.config.data.global_crops_size
    weights = weights_digest(loaded)

    def embed(folder: str | Path, role: str) -> Embedded:
        return embed_images(loaded, weights, Path(folder), role, files["work"], size, batch_size, runtime, quiet)

    started = time.perf_counter()  # every folder first: a bad seed or evaluation folder fails before any work
    data = embed(pool, "pool")
    references = [embed(folder, "exclude") for folder in exclude]
    seeds = embed(seed, "seed") if seed is not None else None
    report.unreadable = data.unreadable
    report.sizes["pool"] = len(data.paths) + len(data.unreadable)
    rows = _stage_done(report, "embedded", np.arange(len(data.paths)), started)
    rows = _stage_done(report, "deduplicated", *_deduplicate(data, settings, report, files["duplicates"]))
    if references:
        rows = _stage_done(report, "decontaminated", *_decontaminate(data, rows, references, settings, report))
    if seeds is not None:
        rows = _stage_done(report, "retrieved", *_retrieve(data, rows, seeds, settings, report))
    if settings.balance:
        rows = _stage_done(report, "balanced", *_balance(data, rows, settings, report))
    atomic_write_text("".join(data.paths[i] + "\n" for i in rows), out)
    if symlinks is not None:
        write_symlinks([data.paths[i] for i in rows], pool, files["symlinks"])
    examples = {"duplicates": report.duplicate_examples, "excluded": report.excluded_examples,
                "retrieved": report.retrieved_examples}
    for name in PICTURES:
        if examples[name]:
            report.outputs[f"{name}_picture"] = str(write_picture(examples[name], files[f"{name}_picture"]))
    atomic_write_text(json.dumps(asdict(report), indent=1), files["report"])
    return report
