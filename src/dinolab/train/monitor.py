"""Run metrics: metrics.jsonl (one JSON object per logged step), TensorBoard, and the collapse check."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends to metrics.jsonl, first dropping lines past `start_iteration` (left by a run that is resumed
    from an earlier checkpoint), so every iteration appears once."""

    def __init__(self, run_dir: str | Path, start_iteration: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        kept = [json.dumps(r) + "\n" for r in read_metrics(run_dir) if r["iteration"] <= start_iteration]
        self.path.write_text("".join(kept))
        self.file = self.path.open("a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, float | int]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = int(record["iteration"])
            for key, value in record.items():
                if key not in ("iteration", "epoch"):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collapse_warning(teacher_entropy: float, num_prototypes: int) -> str | None:
    """The DINO paper's two failure modes, read off the teacher's output entropy."""
    max_entropy = math.log(num_prototypes)
    if teacher_entropy < 0.01 * max_entropy:
        return (
            f"teacher entropy {teacher_entropy:.3f} is near 0: one prototype wins for every image (collapse). "
            "Usual remedies: keep centering on (loss.center_momentum < 1), lower optim.lr, raise "
            "loss.teacher_temp less steeply, lengthen optim.warmup_epochs."
        )
    if teacher_entropy > 0.99 * max_entropy:
        return (
            f"teacher entropy {teacher_entropy:.3f} is near log K = {max_entropy:.3f}: the teacher output is "
            "uniform (collapse). Usual remedies: sharpen more (lower loss.teacher_temp / "
            "loss.warmup_teacher_temp), raise optim.momentum_teacher, check the data are not constant."
        )
    return None
