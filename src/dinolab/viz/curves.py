"""Training curves from a run's metrics.jsonl: a summary PNG with one panel per logged quantity (the one
report.md shows), and optionally one PNG per quantity.

A quantity is plotted when at least one logged step has it (k-NN accuracy, for one, is logged only
every so often), against the iterations where it was logged.
"""

from __future__ import annotations

from pathlib import Path

from dinolab.io import read_metrics
from dinolab.viz.figures import new_figure

# metrics.jsonl key -> panel title, in the order the panels appear
CURVES = {
    "loss": "loss",
    "ibot_loss": "iBOT patch loss",
    "koleo_loss": "KoLeo loss",
    "gram_loss": "Gram anchoring loss",
    "anchor_loss": "feature anchoring loss",
    "lr": "learning rate",
    "teacher_temp": "teacher temperature",
    "teacher_entropy": "teacher entropy (nats)",
    "kl": "KL(teacher || student)",
    "knn_top1": "k-NN top-1",
    "knn_reference_top1": "k-NN top-1, reference domain",
}
SUMMARY_NAME = "training_curves.png"


def curve_series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (iterations, values) for every key of CURVES that some record holds."""
    series = {}
    for key in CURVES:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        if points:
            series[key] = ([i for i, _ in points], [v for _, v in points])
    return series


def save_curves(
    run_dir: str | Path, out_dir: str | Path | None = None, per_quantity: bool = True, columns: int = 4
) -> list[Path]:
    """Write training_curves.png (all panels) and, with `per_quantity`, curve_<key>.png for each quantity.

    Files go to `out_dir` (default: the run directory). Returns the paths written, the summary first;
    an empty list when the run has logged nothing yet.
    """
    series = curve_series(read_metrics(run_dir))
    if not series:
        return []
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = min(columns, len(series))
    fig, axes = new_figure(-(-len(series) // columns), columns, panel_inches=3.2)
    for ax in axes.ravel()[len(series) :]:
        ax.set_axis_off()
    paths = [out_dir / SUMMARY_NAME]
    for ax, (key, (x, y)) in zip(axes.ravel(), series.items(), strict=False):
        _plot(ax, key, x, y)
        if per_quantity:
            single, single_axes = new_figure(1, 1, panel_inches=3.2)
            _plot(single_axes[0, 0], key, x, y)
            paths.append(out_dir / f"curve_{key}.png")
            single.savefig(paths[-1], dpi=100)
    fig.savefig(paths[0], dpi=100)
    return paths


def _plot(ax, key: str, x: list[int], y: list[float]) -> None:
    ax.plot(x, y, lw=1.2, marker="o" if len(x) < 20 else None, ms=3)
    ax.set_title(CURVES[key])
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
