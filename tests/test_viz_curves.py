"""Training curves: the quantities present in metrics.jsonl, and the report that embeds them."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from dinolab.viz.curves import curve_series, save_curves


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def logged_steps(n: int = 10) -> list[dict]:
    records = [
        {"iteration": i, "epoch": i / n, "loss": 5 - 0.1 * i, "lr": 1e-3, "wd": 0.04, "momentum": 0.99,
         "teacher_temp": 0.04, "teacher_entropy": 6.0, "kl": 0.2, "img_per_s": 100.0}
        for i in range(n)
    ]
    for r in records[::5]:
        r["knn_top1"] = 50.0 + r["iteration"]  # logged every few steps only
    return records


def test_series_hold_the_present_quantities_only() -> None:
    series = curve_series(logged_steps())
    assert list(series) == ["loss", "lr", "teacher_temp", "teacher_entropy", "kl", "knn_top1"]  # no ibot/koleo
    assert series["knn_top1"] == ([0, 5], [50.0, 55.0])
    assert series["loss"][0] == list(range(10))


def test_save_curves(tmp_path: Path) -> None:
    assert save_curves(tmp_path / "empty") == []
    records = logged_steps()
    for r in records:
        r["ibot_loss"] = 1.0
    write_metrics(tmp_path / "run", records)
    paths = save_curves(tmp_path / "run")
    assert [p.name for p in paths] == ["training_curves.png"] + [
        f"curve_{k}.png" for k in ("loss", "ibot_loss", "lr", "teacher_temp", "teacher_entropy", "kl", "knn_top1")
    ]
    assert all(p.parent == tmp_path / "run" for p in paths)
    with Image.open(paths[0]) as summary:
        assert summary.size == (4 * 320, 2 * 320)  # 7 panels, 4 per row, 3.2 in at 100 dpi


def test_report_embeds_the_summary_only(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run", logged_steps())
    assert [p.name for p in save_curves(tmp_path / "run", tmp_path / "out", per_quantity=False)] == [
        "training_curves.png"
    ]
