"""Small-data ablations of the DINO demo recipe: one factor at a time, on one fixed short budget.

Each named ablation is a list of config overrides on `benchmarks/small_data/baseline.yaml` (the demo recipe
as it was before this study, frozen so the table can be regenerated). A run pretrains for one epoch over a
fixed seeded subset of `--images` Fashion-MNIST training images (schedules span that epoch), then scores
weighted k-NN (T = 0.07) of the EMA teacher's [CLS] on the full 10k test images against the full 60k
training images, and appends one JSON line to `--out`: k-NN top-1 at k = 10/20/100/200, wall time, img/s,
the teacher entropy / log K and KL over training, and the warnings the training monitor printed.
`random-init` (once per architecture) and `pixels` are rows of the same file.

`--data disjoint` is the second data set: a class-disjoint split of Fashion-MNIST written as image folders
(pretrain on the even classes, k-NN on the odd ones), normalized with the mean/std measured on the folder.
`--images 0` trains on the recipe's full data for its own number of epochs (for whole recipes, not ablations).
A row starts over unless `--resume` is given: then a stopped run (a long `--images 0` recipe cut off by a
reboot) continues from its run dir's last checkpoint, bit for bit, and `wall_s` counts this process only.

Usage:
  .venv/bin/python benchmarks/small_data_ablations.py baseline patch4 lr_x4 ...    # in order, one at a time
  .venv/bin/python benchmarks/small_data_ablations.py --list
  .venv/bin/python benchmarks/small_data_ablations.py --table                       # markdown from --out
  .venv/bin/python benchmarks/small_data_ablations.py --plot-entropy docs/images/small_data_entropy.png
  .venv/bin/python benchmarks/small_data_ablations.py --plot-run runs/dino_vit_tiny_fmnist docs/images/x.png
  .venv/bin/python benchmarks/small_data_ablations.py --probe runs/small_data/fmnist/baseline
  .venv/bin/python benchmarks/small_data_ablations.py --recipe dino_vit_tiny_fmnist --images 0 --data disjoint \\
      --tag disjoint_demo recipe
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dinolab import config as config_lib
from dinolab.data.datasets import FMNIST_DIR, FashionMNIST, read_idx
from dinolab.data.loader import build_eval_dataset
from dinolab.data.stats import measure_images
from dinolab.data.transforms import normalize_uint8
from dinolab.device import resolve
from dinolab.eval.baselines import PixelBaseline, random_init_like
from dinolab.eval.knn import knn, knn_classify
from dinolab.io import read_metrics
from dinolab.models.build import vit_kwargs_of
from dinolab.train import fit
from dinolab.train.monitor import UNIFORM_MIN_LOGGED_STEPS, UNIFORM_STRETCH_EPOCHS, UniformTargetsWatch

HERE = Path(__file__).parent
BASELINE = HERE / "small_data" / "baseline.yaml"
OUT = HERE / "results" / "small_data_ablations.jsonl"
WORK = Path("runs/small_data")
KS = (10, 20, 100, 200)
IBOT = ["loss.ibot_weight=1.0", "mask.enabled=true", "head.shared=true", "head.patch_out_dim=2048",
        "loss.ibot_teacher_temp=0.04", "loss.ibot_warmup_teacher_temp=0.04"]
DINOV2 = [*IBOT, "head.shared=false", "loss.centering=sinkhorn", "loss.koleo_weight=0.1",
          "model.num_register_tokens=4", "model.layerscale_init=1e-5", "optim.layer_decay=0.9",
          "optim.patch_embed_lr_mult=0.2"]

# name -> overrides of the baseline; one factor each (the names say which)
ABLATIONS: dict[str, list[str]] = {
    "baseline": [],
    "patch4": ["model.patch_size=4", "data.local_crops_size=12"],  # 7x7 tokens (local 3x3) instead of 4x4 (2x2)
    "patch14": ["model.patch_size=14", "data.local_crops_size=14"],  # 2x2 tokens (local 1x1)
    "depth2": ["model.depth=2"],
    "depth8": ["model.depth=8"],
    "width384": ["model.arch=vit_small"],  # ViT-Small width, 6 heads
    "crops_paper": ["data.global_crops_scale=[0.4,1.0]", "data.local_crops_scale=[0.05,0.4]"],
    "crops_milder": ["data.global_crops_scale=[0.8,1.0]", "data.local_crops_scale=[0.4,0.7]"],
    "local0": ["data.local_crops_number=0"],
    "local4": ["data.local_crops_number=4"],
    "local8": ["data.local_crops_number=8"],
    "no_hflip": ["data.hflip=false"],
    "no_color": ["data.color_jitter=false", "data.solarize=false"],  # brightness/contrast, solarization
    "no_blur": ["data.blur_sigma=[0.1,0.1]"],
    "head_k256": ["head.out_dim=256"],
    "head_k8192": ["head.out_dim=8192"],
    "head_small_mlp": ["head.hidden_dim=256", "head.bottleneck_dim=64"],
    "bottleneck64": ["head.bottleneck_dim=64"],  # logits are cosines: their spread over images ~ 1/sqrt(dim)
    "bottleneck16": ["head.bottleneck_dim=16"],
    "teacher_temp_07": ["loss.teacher_temp=0.07", "loss.warmup_teacher_temp=0.07"],
    "teacher_temp_02": ["loss.teacher_temp=0.02", "loss.warmup_teacher_temp=0.02"],
    # DINO's warm-up 0.04 -> 0.07 over 30% of the run (30 of its 100 epochs), here of the one-epoch budget
    "teacher_temp_warmup": ["loss.warmup_teacher_temp=0.04", "loss.teacher_temp=0.07",
                            "loss.warmup_teacher_temp_epochs=0.3"],
    "sinkhorn": ["loss.centering=sinkhorn"],
    "koleo": ["loss.koleo_weight=0.1"],
    "koleo_03": ["loss.koleo_weight=0.3"],
    "koleo0": ["loss.koleo_weight=0"],
    "lr_x4": ["optim.lr=0.008"],
    "lr_div4": ["optim.lr=0.0005"],
    "lr_zero": ["optim.lr=1e-9", "optim.min_lr=1e-10"],  # the not-learning control
    "batch64_linear": ["optim.batch_size=64"],  # lr scales x batch/256: peak 5e-4
    "batch64_samepeak": ["optim.batch_size=64", "optim.lr=0.001"],  # peak 2.5e-4 as at batch 32
    "ema_996": ["optim.momentum_teacher=0.996"],
    "ema_9995": ["optim.momentum_teacher=0.9995"],
    "ema_9": ["optim.momentum_teacher=0.9"],
    "ibot": IBOT,
    "dinov2": DINOV2,
    "recipe": [],  # a whole recipe given by --recipe, unchanged
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="ablations to run, in order (see --list)")
    parser.add_argument("--recipe", default=str(BASELINE), help="base recipe (default: the frozen baseline)")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (combinations)")
    parser.add_argument("--images", type=int, default=16000, help="training subset, one epoch; 0 = the recipe's")
    parser.add_argument("--data", choices=("fmnist", "disjoint"), default="fmnist")
    parser.add_argument("--tag", default="", help="name of the row in the table (default: the ablation's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 to run two rows side by side)")
    parser.add_argument("--knn-every", type=int, default=0, help="in-training k-NN monitor (eval.knn_every)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped row from its run dir's last checkpoint (wall_s: this process only)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--plot-entropy", type=Path, help="PNG: teacher entropy / log K and KL of every row")
    parser.add_argument("--plot-run", nargs=2, type=Path, metavar=("RUN_DIR", "PNG"),
                        help="PNG: a run's k-NN monitor against random init and pixels, and its entropy / KL")
    parser.add_argument("--features", type=Path, metavar="RUN_DIR",
                        help="k-NN of a trained run with other feature choices than the last [CLS] (JSON)")
    parser.add_argument("--probe", type=Path, metavar="RUN_DIR",
                        help="how alike the teacher's outputs are across 512 test images, at init and trained")
    args = parser.parse_args()
    if args.probe:
        probe(args.probe)
        return
    if args.features:
        print(json.dumps({"run": str(args.features), "knn_top1": feature_choices(args.features)}))
        return
    if args.plot_entropy:
        plot_entropy(read_rows(args.out), args.plot_entropy)
        return
    if args.plot_run:
        plot_run(*args.plot_run)
        return
    if args.list:
        for name, overrides in ABLATIONS.items():
            print(f"{name:18s} {' '.join(overrides)}")
        return
    if args.table:
        print(markdown_table(read_rows(args.out)))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in args.names:
        if name not in ABLATIONS and name not in ("random-init", "pixels"):
            raise SystemExit(f"unknown ablation {name!r}; --list shows them")
    for name in args.names:
        row = run(name, args)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("name", "knn_top1", "wall_s") if k in row}), flush=True)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fmnist_subset(n: int, seed: int = 0) -> Path:
    """The first n images of a seeded permutation of the 60k training images, as IDX files beside the full
    test split (a data.path for data.dataset=fmnist)."""
    root = WORK / "data" / f"fmnist_{n}"
    if not (root / "train-labels-idx1-ubyte").exists():
        root.mkdir(parents=True, exist_ok=True)
        order = torch.randperm(60000, generator=torch.Generator().manual_seed(seed))[:n].numpy()
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            array = read_idx(FMNIST_DIR / f"train-{kind}-ubyte.gz")[order]
            header = bytes([0, 0, 8, ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (root / f"train-{kind}-ubyte").write_bytes(header + array.tobytes())
            (root / f"t10k-{kind}-ubyte.gz").unlink(missing_ok=True)
            (root / f"t10k-{kind}-ubyte.gz").symlink_to(FMNIST_DIR / f"t10k-{kind}-ubyte.gz")
    return root


def disjoint_folders() -> tuple[Path, Path]:
    """Fashion-MNIST split by class into PNG folders: pretrain/ holds the training images of the even classes
    (T-shirt, pullover, coat, shirt, bag), eval/train and eval/test those of the odd ones (trouser, dress,
    sandal, sneaker, ankle boot): features learned on one set of classes, judged on another."""
    root = WORK / "data" / "fmnist_disjoint"
    done = root / "complete"
    if not done.exists():
        for split, folder in (("train", "train"), ("test", "test")):
            ds = FashionMNIST(split=split)
            for i, (image, label) in enumerate(zip(ds.images.numpy(), ds.labels.tolist(), strict=True)):
                parent = (root / "pretrain") if label % 2 == 0 else (root / "eval" / folder)
                if label % 2 == 0 and split == "test":
                    continue
                path = parent / f"{label}_{ds.classes[label].split('/')[0]}" / f"{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[0]).save(path)
        done.touch()
    return root / "pretrain", root / "eval"


def config_for(name: str, args: argparse.Namespace) -> config_lib.Config:
    tag = args.tag or name
    overrides = [*ABLATIONS.get(name, []), *args.set, f"train.output_dir={WORK / args.data / tag}",
                 f"train.num_threads={args.threads}", f"eval.knn_every={args.knn_every}"]
    if args.data == "disjoint":
        pretrain, evaluation = disjoint_folders()
        stats = measure_images(pretrain)
        overrides += ["data.dataset=folder", f"data.path={pretrain}", f"data.mean={list(stats.mean)}",
                      f"data.std={list(stats.std)}", f"eval.test_path={evaluation / 'test'}"]
    if args.images:
        if args.data == "disjoint":
            raise SystemExit("--data disjoint trains on its whole pretrain folder: use --images 0")
        overrides += [f"data.path={fmnist_subset(args.images)}", "optim.epochs=1"]
    return config_lib.load(args.recipe, overrides)


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def eval_datasets(cfg: config_lib.Config, data: str) -> tuple[Any, Any]:
    if data == "fmnist":
        return FashionMNIST(split="train"), FashionMNIST(split="test")
    _, evaluation = disjoint_folders()
    train = build_eval_dataset(cfg.data, cfg.model.in_chans, "train", evaluation / "train")
    return train, build_eval_dataset(cfg.data, cfg.model.in_chans, "test", evaluation / "test", classes=train.classes)


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cfg = config_for("baseline" if name in ("random-init", "pixels") else name, args)
    runtime = resolve(cfg.train.device, cfg.train.precision)
    row: dict[str, Any] = {"name": args.tag or name, "data": args.data, "recipe": str(args.recipe),
                           "overrides": [*ABLATIONS.get(name, []), *args.set], "images": args.images,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    train_ds, test_ds = eval_datasets(cfg, args.data)
    d = cfg.data
    if name in ("random-init", "pixels"):
        # random-init of the baseline architecture; other architectures get theirs with their ablation
        from dinolab.models.build import build_backbone

        model = PixelBaseline(cfg.model.patch_size) if name == "pixels" else random_init_like(build_backbone(cfg), 0)
        scores = knn(model, train_ds, test_ds, KS, cfg.eval.knn_temperature, d.mean, d.std, 256, runtime, True)
        return row | {"knn_top1": {str(k): scores[k]["top1"] for k in KS}}
    warnings = Warnings()
    logging.getLogger("dinolab").addHandler(warnings)
    start = time.perf_counter()
    try:
        result = fit(cfg, resume=args.resume, quiet=True)
    finally:
        logging.getLogger("dinolab").removeHandler(warnings)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    scores = knn(result.backbone, train_ds, test_ds, KS, cfg.eval.knn_temperature, d.mean, d.std, 256, runtime, True)
    architecture = json.dumps(vit_kwargs_of(result.backbone), sort_keys=True, default=str)
    done = [r for r in (read_rows(args.out) if args.out.exists() else []) if r.get("architecture") == architecture
            and r["data"] == args.data and r.get("mean") == list(d.mean)]
    random_init = done[0]["random_init_knn"] if done else {str(k): v["top1"] for k, v in knn(
        random_init_like(result.backbone, 0), train_ds, test_ds, KS, cfg.eval.knn_temperature, d.mean, d.std,
        256, runtime, True).items()}
    records = read_metrics(result.run_dir)
    log_k = math.log(cfg.head.out_dim)
    curve = [[r["iteration"], round(r["teacher_entropy"] / log_k, 4), round(r["kl"], 4)] for r in records]
    tail = curve[-max(len(curve) // 10, 1):]
    return row | {
        "knn_top1": {str(k): scores[k]["top1"] for k in KS},
        "random_init_knn": random_init,  # the same architecture at random init (seed 0), once per architecture
        "architecture": architecture,
        "mean": list(d.mean),
        "wall_s": round(wall, 1),
        "resumed": args.resume,
        "eval_s": round(time.perf_counter() - start, 1),
        "iterations": records[-1]["iteration"],
        "batch_size": cfg.optim.batch_size,
        "img_per_s": round(float(np.median([r["img_per_s"] for r in records[1:] or records])), 1),
        "entropy_frac_final": round(float(np.mean([c[1] for c in tail])), 4),
        "entropy_frac_min": min(c[1] for c in curve),
        "kl_final": round(float(np.mean([c[2] for c in tail])), 4),
        "log_k": round(log_k, 3),
        "curve": curve,
        "knn_curve": [[r["iteration"], r["knn_top1"], r["knn_random_init"]] for r in records if "knn_top1" in r],
        "warnings": [m[:160] for m in warnings.messages],
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One table per data set: the trained rows against the baseline, then random-init and pixels."""
    out = []
    for data in sorted({r["data"] for r in rows}):
        mine = [r for r in rows if r["data"] == data]
        base = next((r["knn_top1"]["20"] for r in mine if r["name"] == "baseline"), None)
        out += [f"data: {data}", "",
                "| ablation | overrides | k-NN k=20 | vs baseline | vs its random init | H/log K end (min) | KL end "
                "| img/s | train s | near-uniform / k-NN warning |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            k20 = r["knn_top1"]["20"]
            if "wall_s" not in r:
                out.append(f"| **{r['name']}** | | {k20:.2f} | {_delta(k20, base)} | | | | | | |")
                continue
            below_random = any("below the same network" in w for w in r["warnings"])
            flags = " ".join(flag for flag, warned in (("uniform", replay_uniform_warning(r)), ("k-NN", below_random))
                             if warned) or "-"
            out.append(
                f"| {r['name']} | {' '.join(r['overrides']) or '-'} | {k20:.2f} | {_delta(k20, base)} | "
                f"{k20 - r['random_init_knn']['20']:+.2f} | "
                f"{r['entropy_frac_final']:.2f} ({r['entropy_frac_min']:.2f}) | "
                f"{r['kl_final']:.2f} | {r['img_per_s']:.0f} | {r['wall_s']:.0f} | {flags} |"
            )
        out.append("")
    return "\n".join(out)


def replay_uniform_warning(row: dict[str, Any]) -> bool:
    """Whether the near-uniform warning fires on this row's logged curve with today's thresholds (rows run
    before a threshold changed are judged alike). The stretch and warm-up are those of the recipe."""
    cfg = config_lib.load(row["recipe"], [*row["overrides"], "data.dataset=fmnist"])
    iters = row["iterations"] if row["images"] else row["iterations"] // cfg.optim.epochs
    warmup = max(round(cfg.optim.warmup_epochs * iters), 1)
    stretch = max(round(UNIFORM_STRETCH_EPOCHS * iters), UNIFORM_MIN_LOGGED_STEPS * cfg.train.log_every)
    watch = UniformTargetsWatch("[CLS]", "", cfg.head.out_dim, stretch)
    log_k = math.log(cfg.head.out_dim)
    return any(watch.update({"iteration": it, "teacher_entropy": h * log_k, "kl": kl})
               for it, h, kl in row["curve"] if it > warmup)


@torch.no_grad()
def probe(run_dir: Path, n: int = 512) -> None:
    """Why targets are near uniform: the mean cosine between different images' [CLS] and bottleneck outputs,
    and the spread of each prototype's logit over images (in units of the teacher temperature it is divided by)."""
    from dinolab.io import read_training_checkpoint
    from dinolab.models.build import build_student_teacher

    cfg = config_lib.load(run_dir / "config.yaml")
    _, teacher = build_student_teacher(cfg)
    x = normalize_uint8(FashionMNIST(split="test").images[:n], cfg.data.mean, cfg.data.std)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    for name in ("random init", "trained"):
        if name == "trained":
            teacher.load_state_dict(read_training_checkpoint(run_dir / "checkpoint.pth").state["teacher"])
        teacher.eval()
        cls = teacher.backbone.forward_features(x)["x_norm_clstoken"]
        z = F.normalize(teacher.head.mlp(cls), dim=-1)
        c = F.normalize(cls, dim=-1)
        spread = teacher.head(cls).std(0).mean().item()
        print(f"{name}: mean cosine between images: [CLS] {(c @ c.T)[off_diagonal].mean():.3f}, bottleneck "
              f"{(z @ z.T)[off_diagonal].mean():.3f}; logit spread over images {spread:.4f} "
              f"= {spread / cfg.loss.teacher_temp:.2f} at teacher temperature {cfg.loss.teacher_temp}")


def feature_choices(run_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Weighted k-NN (60k / 10k) of a trained run's teacher, and of the same network at random init, with other
    feature choices than the last [CLS]: the [CLS] of the last 4 blocks, [CLS] + average-pooled patch tokens
    (DINOv2's linear-probe input), and all the last block's patch tokens (each L2-normalized) flattened, which
    keeps the image's layout as pixels do."""
    from dinolab.hub import load_backbone

    trained = load_backbone(run_dir).eval()
    cfg = config_lib.load(run_dir / "config.yaml")
    return {name: _feature_choices(model, cfg) for name, model in
            (("trained", trained), ("random_init", random_init_like(trained, 0).eval()))}


def _feature_choices(model: torch.nn.Module, cfg: config_lib.Config) -> dict[str, dict[str, float]]:
    choices = ("cls", "cls_last4", "cls_avgpool", "patches_flat")

    def features(split: str) -> tuple[dict[str, Tensor], Tensor]:
        ds = FashionMNIST(split=split)
        out: dict[str, list[Tensor]] = {c: [] for c in choices}
        with torch.no_grad(), resolve("cpu", "auto").autocast():  # bf16 where the CPU has it, as the demo
            for start in range(0, len(ds.images), 1000):
                x = normalize_uint8(ds.images[start:start + 1000], cfg.data.mean, cfg.data.std)
                layers = model.get_intermediate_layers(x, 4, return_class_token=True)
                patches, cls = (t.float() for t in layers[-1])
                out["cls"].append(cls)
                out["cls_last4"].append(torch.cat([F.normalize(c.float(), dim=1) for _, c in layers], 1))
                out["cls_avgpool"].append(torch.cat([F.normalize(cls, dim=1),
                                                     F.normalize(patches.mean(1), dim=1)], 1))
                out["patches_flat"].append(F.normalize(patches, dim=-1).flatten(1))
        return {c: torch.cat(v) for c, v in out.items()}, ds.labels

    (train, train_y), (test, test_y) = features("train"), features("test")
    return {c: {str(k): round(v["top1"], 2) for k, v in knn_classify(train[c], train_y, test[c], test_y, KS).items()}
            for c in choices}


def plot_entropy(rows: list[dict[str, Any]], png: Path) -> None:
    """Teacher entropy / log K and KL against the fraction of the budget, one line per trained row."""
    from dinolab.viz.figures import new_figure

    fig, axes = new_figure(1, 2, panel_inches=5.0)
    for r in rows:
        if "curve" not in r or r["data"] != "fmnist" or r["images"] == 0:
            continue
        curve = np.array(r["curve"])
        x = curve[:, 0] / curve[-1, 0]
        style = {"lw": 2.2, "color": "black"} if r["name"] == "baseline" else {"lw": 0.9}
        axes[0, 0].plot(x, curve[:, 1], label=f"{r['name']} ({r['knn_top1']['20']:.1f})", **style)
        axes[0, 1].plot(x, curve[:, 2], **style)
    axes[0, 0].set_title("teacher entropy / log K")
    axes[0, 1].set_title("KL(teacher || student), nats")
    for ax in axes[0]:
        ax.set_xlabel("fraction of the budget")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, ncol=2, title="ablation (k-NN k=20)", title_fontsize=7)
    fig.savefig(png, dpi=110)


def plot_run(run_dir: Path, png: Path) -> None:
    """The learning curve: the in-training k-NN check (weighted, k=20, its 10k/2k monitor split) against the
    same network at random init and raw pixels on the same split, and the teacher entropy / log K and KL."""
    from torch.utils.data import Subset

    from dinolab.viz.figures import new_figure

    cfg = config_lib.load(run_dir / "config.yaml")
    records = read_metrics(run_dir)
    knn_points = np.array([[r["iteration"], r["knn_top1"], r["knn_random_init"]] for r in records if "knn_top1" in r])
    train = Subset(FashionMNIST(split="train"), range(cfg.eval.knn_monitor_train))
    test = Subset(FashionMNIST(split="test"), range(cfg.eval.knn_monitor_test))
    pixels = knn(PixelBaseline(cfg.model.patch_size), train, test, 20, cfg.eval.knn_temperature, cfg.data.mean,
                 cfg.data.std, quiet=True)[20]["top1"]
    fig, axes = new_figure(1, 2, panel_inches=4.5)
    ax = axes[0, 0]
    ax.plot(knn_points[:, 0], knn_points[:, 1], marker="o", label="DINO teacher")
    ax.axhline(knn_points[0, 2], color="gray", ls="--", label="random init")
    ax.axhline(pixels, color="red", ls=":", label="raw pixels")
    ax.set_title(f"k-NN top-1, k=20 ({cfg.eval.knn_monitor_train // 1000}k/{cfg.eval.knn_monitor_test // 1000}k)")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    it = [r["iteration"] for r in records]
    ax.plot(it, [r["teacher_entropy"] / math.log(cfg.head.out_dim) for r in records], label="entropy / log K")
    ax.plot(it, [r["kl"] for r in records], label="KL (nats)")
    ax.set_title("teacher targets")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(png, dpi=110)


def _delta(value: float, base: float | None) -> str:
    return "" if base is None else f"{value - base:+.2f}"


if __name__ == "__main__":
    main()
