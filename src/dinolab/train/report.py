"""The run's human-readable report: report.md with a summary and the training curves (viz/curves.py)."""

from __future__ import annotations

from pathlib import Path

from dinolab.config import NUM_GLOBAL_CROPS, Config
from dinolab.io import read_metrics
from dinolab.viz.curves import save_curves

# the loss's parts shown on the report's last-step line, when the recipe has them (feature distillation has
# no targets, hence no entropy or KL)
REPORTED_TERMS = (("teacher_entropy", "teacher entropy"), ("kl", "KL"), ("cls_loss", "[CLS] cosine distance"),
                  ("patch_loss", "patch-similarity KL"))


def write_report(
    run_dir: str | Path, cfg: Config, skipped_images: int = 0, sections: dict[str, str] | None = None
) -> Path:
    """(Re)write report.md; `sections` (title -> markdown) are appended, e.g. the demo's k-NN table."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    lines = [f"# dinolab run: {run_dir.name}", ""]
    lines += [
        f"- model: {cfg.model.arch}/{cfg.model.patch_size}, {cfg.model.in_chans} channel(s), "
        + (f"feature distillation from {cfg.distill.teacher}" if cfg.distill.teacher else
           f"{cfg.head.out_dim} prototypes"),
        f"- data: {cfg.data.dataset} {cfg.data.file_list or cfg.data.path}, "
        f"{NUM_GLOBAL_CROPS} x {cfg.data.global_crops_size}px + "
        f"{cfg.data.local_crops_number} x {cfg.data.local_crops_size}px crops",
        f"- optimization: {cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, base lr {cfg.optim.lr}",
    ]
    if skipped_images:
        lines.append(f"- unreadable images skipped: {skipped_images}")
    if records:
        last = records[-1]
        mean_speed = sum(r["img_per_s"] for r in records) / len(records)
        lines += [
            f"- last logged step: iteration {last['iteration']}, loss {last['loss']:.4f}"
            + "".join(f", {name} {last[key]:.3f}" for key, name in REPORTED_TERMS if key in last),
            f"- mean throughput: {mean_speed:.1f} img/s",
        ]
        lines += knn_lines(records)
    curves = save_curves(run_dir, per_quantity=False)
    if curves:
        lines += ["", f"![training curves]({curves[0].name})"]
    for title, body in (sections or {}).items():
        lines += ["", f"## {title}", "", body]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def knn_lines(records: list[dict]) -> list[str]:
    """The first and last in-training k-NN checks, on the training domain and (eval.reference_data) on the
    reference domain: with a pretrained start (model.init) the second shows how much of the old domain is kept."""
    lines = []
    for key, domain in (("knn_top1", "training domain"), ("knn_reference_top1", "reference domain")):
        checks = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
        if checks:
            (first_at, first), (last_at, last) = checks[0], checks[-1]
            lines.append(f"- k-NN top-1 (k=20), {domain}: {first:.2f}% at iteration {first_at} -> {last:.2f}% at "
                         f"iteration {last_at}")
    return lines
