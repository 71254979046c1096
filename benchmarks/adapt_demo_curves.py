"""The adaptation demo's learning curves (docs/adapt.md): k-NN top-1 (k=20) on the new and on the original classes
vs iteration, for each adaptation run, from its metrics.jsonl (`knn_top1`, `knn_reference_top1`).

The runs log no check at iteration 0, so the starting point is measured here: the same check (dinolab's
`KNNMonitor`, the first run's config: same image slices, normalization and precision) on the released backbone
every run starts from (`model.init`). Prints a markdown table and writes the figure. Run:

    .venv/bin/python benchmarks/adapt_demo_curves.py --out docs/images/adapt_demo_curves.png \
        naive=runs/adapt_demo/adapt_naive warmup_only=runs/adapt_demo/adapt_warmup_only \
        recipe=runs/adapt_demo/adapt_recipe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def curve(run: Path) -> dict[int, tuple[float, float]]:
    points = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "knn_top1" in record:
            points[int(record["iteration"])] = (record["knn_top1"], record.get("knn_reference_top1"))
    return points


def start_point(run: Path) -> tuple[float, float]:
    from dinolab import config as config_lib
    from dinolab.device import resolve
    from dinolab.hub import load_backbone
    from dinolab.train.monitor import KNNMonitor, reference_domain

    cfg = config_lib.load(run / "config.yaml")
    runtime = resolve(cfg.train.device, cfg.train.precision)
    model = load_backbone(cfg.model.init).to(runtime.device).eval()
    with torch.no_grad():
        new = KNNMonitor(cfg, runtime)(model)
        old = KNNMonitor(cfg, runtime, domain=reference_domain(cfg))(model)
    return new, old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--out", default="docs/images/adapt_demo_curves.png")
    args = parser.parse_args()
    runs = {spec.split("=", 1)[0]: Path(spec.split("=", 1)[1]) for spec in args.runs}
    curves = {name: curve(run) for name, run in runs.items()}
    start = start_point(next(iter(runs.values())))
    for points in curves.values():
        points[0] = start
    iterations = sorted(set().union(*curves.values()))
    names = list(curves)
    print("| iteration | " + " | ".join(f"{n}: new | {n}: original" for n in names) + " |")
    print("|" + " --- |" * (1 + 2 * len(names)))
    for it in iterations:
        cells = []
        for n in names:
            new, old = curves[n].get(it, (None, None))
            cells += ["" if new is None else f"{new:.1f}", "" if old is None else f"{old:.1f}"]
        print(f"| {it} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, column, title in ((axes[0], 0, "new classes (adapting to them)"),
                              (axes[1], 1, "original classes (forgetting)")):
        for n in names:
            xs = sorted(curves[n])
            ax.plot(xs, [curves[n][x][column] for x in xs], marker="o", markersize=3, label=n)
        ax.set_title(title)
        ax.set_xlabel("iteration (batch 32)")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set_ylabel("k-NN top-1 (%), k=20")
    axes[0].legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
