"""Every protocol on one model: features extracted once per dataset, each protocol timed, JSON and markdown out.

`model_to_evaluate` is the single place a model to evaluate is loaded (a dinolab checkpoint or run directory,
the same architecture at random init, or raw pixels); `Evaluation` holds one model and its train/test data
and runs the protocols on the shared features; `run_all` runs them all; `markdown_tables` and
`write_results` turn results into the files a run directory keeps.
"""

from __future__ import annotations

import json
import math
import time
from functools import cached_property
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dinolab.config import Config
from dinolab.device import Runtime, resolve
from dinolab.eval.baselines import check_model_kind, model_of_kind
from dinolab.eval.clustering import clustering
from dinolab.eval.copy_detection import copy_detection
from dinolab.eval.features import extract_tokens
from dinolab.eval.knn import knn_scores
from dinolab.eval.linear import linear_probe_grid
from dinolab.eval.logreg import logistic_regression
from dinolab.eval.lowshot import low_shot
from dinolab.eval.patch_probe import patch_probe
from dinolab.eval.retrieval import retrieval
from dinolab.eval.tokens import NO_PREPROCESS, Preprocess, TokenFeatures
from dinolab.hub import load_model

PROTOCOLS = ("knn", "linear", "logreg", "lowshot", "retrieval", "copydetect", "cluster", "patch")
SECTION_TITLE = "Evaluation suite"


def model_to_evaluate(checkpoint: str | Path, kind: str = "trained", seed: int = 0) -> tuple[nn.Module, Config]:
    """The model to evaluate and the config that describes its input. `checkpoint`: anything
    `dinolab.hub.load_model` reads — a dinolab training checkpoint or run directory (its EMA teacher, what
    DINO evaluates, with its training config) or released DINO / iBOT / DINOv2 weights (ImageNet
    normalization, 224 px). `kind`: "trained", "random-init" (the same architecture, fresh weights from
    `seed`) or "pixels" (raw pixels)."""
    check_model_kind(kind)  # before loading: a checkpoint can be a download
    loaded = load_model(checkpoint)
    return model_of_kind(loaded.backbone, kind, seed), loaded.config


class Evaluation:
    """One model with its train and test data: features extracted on first use (and cached on disk with
    `cache_dir`), then every protocol is a method that reads them."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        test_dataset: Dataset,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        patch_size: int,
        preprocess: Preprocess = NO_PREPROCESS,
        batch_size: int = 256,
        runtime: Runtime | None = None,
        cache_dir: str | None = None,
        quiet: bool = False,
    ):
        self.model, self.train_dataset, self.test_dataset = model, train_dataset, test_dataset
        self.mean, self.std, self.patch_size, self.preprocess = mean, std, patch_size, preprocess
        self.batch_size, self.runtime = batch_size, runtime or resolve()
        self.cache_dir, self.quiet = cache_dir, quiet

    def _tokens(self, dataset: Dataset) -> TokenFeatures:
        return extract_tokens(self.model, dataset, self.mean, self.std, 4, self.preprocess, self.batch_size,
                              self.runtime, quiet=self.quiet, cache_dir=self.cache_dir)

    @cached_property
    def train(self) -> TokenFeatures:
        return self._tokens(self.train_dataset)

    @cached_property
    def test(self) -> TokenFeatures:
        return self._tokens(self.test_dataset)

    def knn(self, ks: tuple[int, ...] = (10, 20, 100, 200), temperature: float = 0.07) -> dict:
        return {str(k): r for k, r in knn_scores(self.train, self.test, ks, temperature).items()}

    def linear(self, **options) -> dict:
        return linear_probe_grid(self.train, self.test, quiet=self.quiet, **options)

    def logreg(self, **options) -> dict:
        return logistic_regression(self.train.embedding, self.train.labels, self.test.embedding, self.test.labels,
                                   quiet=self.quiet, **options)

    def lowshot(self, **options) -> dict:
        return low_shot(self.train.embedding, self.train.labels, self.test.embedding, self.test.labels, **options)

    def retrieval(self, max_queries: int | None = 2000, seed: int = 0, **options) -> dict:
        """Test images are the queries (a seeded subsample of `max_queries`: ranking all of a 60,000-image gallery
        costs ~7 ms per query on one core), training images the gallery."""
        queries = torch.arange(len(self.test))
        if max_queries and len(queries) > max_queries:
            queries = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed))[:max_queries]
        return retrieval(self.test.embedding[queries], self.test.labels[queries], self.train.embedding,
                         self.train.labels, **options)

    def copydetect(self, **options) -> dict:
        return copy_detection(self.model, self.test_dataset, self.mean, self.std, preprocess=self.preprocess,
                              batch_size=self.batch_size, runtime=self.runtime, quiet=self.quiet, **options)

    def cluster(self, **options) -> dict:
        """k-means on the test set's embeddings."""
        return clustering(self.test.embedding, self.test.labels, **options)

    def patch(self, **options) -> dict:
        return patch_probe(self.model, self.train_dataset, self.test_dataset, self.mean, self.std, self.patch_size,
                           preprocess=self.preprocess, batch_size=self.batch_size, runtime=self.runtime,
                           quiet=self.quiet, **options)

    def run(self, protocol: str, **options) -> dict:
        """One protocol's result, with the seconds it took (feature extraction not included)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if protocol not in ("copydetect", "patch"):
            self.features_seconds()
        start = time.perf_counter()
        result = getattr(self, protocol)(**options)
        return {**result, "seconds": time.perf_counter() - start}

    def features_seconds(self) -> float:
        """Extract (or load) the train and test features now; the seconds it took (0 when already done)."""
        start = time.perf_counter()
        _ = self.train, self.test
        return time.perf_counter() - start


def run_all(evaluation: Evaluation, options: dict[str, dict] | None = None) -> dict[str, dict]:
    """Every protocol, `options[protocol]` passed to it; plus the feature extraction's seconds under "features"."""
    options = options or {}
    results = {"features": {"seconds": evaluation.features_seconds()}}
    for protocol in PROTOCOLS:
        results[protocol] = evaluation.run(protocol, **options.get(protocol, {}))
    return results


def metric_rows(protocol: str, result: dict) -> list[tuple[str, str]]:
    """(metric name, formatted value) rows of a protocol's headline numbers: the table and the summary line."""
    if protocol == "knn":
        return [(f"k-NN k={k} top-1", f"{r['top1']:.2f}") for k, r in result.items() if isinstance(r, dict)]
    if protocol == "linear":
        best = result["best"]
        pool = " + avgpool" if best["avgpool"] else ""
        return [("linear probe top-1", f"{result['top1']:.2f}"),
                ("linear probe best head", f"{best['blocks']} block(s) [CLS]{pool}, lr {best['lr']:g}")]
    if protocol == "logreg":
        return [("logistic regression top-1", f"{result['top1']:.2f}"),
                ("logistic regression C", f"{result['C']:.3g}")]
    if protocol == "lowshot":
        return [(f"low-shot {budget} top-1", f"{r['mean']:.2f} ± {r['std']:.2f}")
                for budget, r in result.items() if isinstance(r, dict)]
    if protocol == "retrieval":
        return [(f"retrieval {name}", f"{result[name]:.2f}") for name in result if name.startswith("recall@")] + [
            ("retrieval mAP", f"{result['mAP']:.2f}")]
    if protocol == "copydetect":
        return [("copy detection recall@1", f"{result['recall@1']:.2f}"),
                ("copy detection mAP", f"{result['mAP']:.2f}")]
    if protocol == "cluster":
        return [(f"k-means {name}", f"{result[name.lower()]:.2f}") for name in ("accuracy", "NMI", "ARI")]
    if protocol == "patch":
        return [("patch probe mIoU", f"{result['mIoU']:.2f}")]
    raise ValueError(f"unknown protocol {protocol!r}")


def summary_line(protocol: str, result: dict) -> str:
    rows = ", ".join(f"{name} {value}" for name, value in metric_rows(protocol, result))
    return f"{protocol}: {rows} ({result['seconds']:.1f} s)" if "seconds" in result else f"{protocol}: {rows}"


def markdown_tables(results: dict[str, dict[str, dict]]) -> str:
    """`results[model][protocol]`: a metrics table (rows) x models (columns), then seconds per protocol."""
    models = list(results)
    metrics: dict[str, dict[str, str]] = {}
    for model, by_protocol in results.items():
        for protocol in PROTOCOLS:
            if protocol in by_protocol:
                for name, value in metric_rows(protocol, by_protocol[protocol]):
                    metrics.setdefault(name, {})[model] = value
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    lines += [f"| {name} | " + " | ".join(row.get(m, "-") for m in models) + " |" for name, row in metrics.items()]
    lines += ["", "| seconds | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for protocol in ("features", *PROTOCOLS):
        cells = [results[m][protocol]["seconds"] if protocol in results[m] else math.nan for m in models]
        if not all(math.isnan(c) for c in cells):
            lines.append(f"| {protocol} | " + " | ".join("-" if math.isnan(c) else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, dict[str, dict]], out_dir: str | Path) -> Path:
    """`out_dir/<model>/<protocol>.json` for every result of `results[model][protocol]`."""
    out_dir = Path(out_dir)
    for model, by_protocol in results.items():
        (out_dir / model).mkdir(parents=True, exist_ok=True)
        for protocol in PROTOCOLS:
            if protocol in by_protocol:
                (out_dir / model / f"{protocol}.json").write_text(json.dumps(by_protocol[protocol], indent=1))
    return out_dir


def write_markdown(
    results: dict[str, dict[str, dict]], out_dir: str | Path, note: str, run_dir: str | Path | None
) -> Path:
    """`out_dir/eval.md` with `note` and the tables; the same as a section of `run_dir`'s report.md if given."""
    body = f"{note}\n\n{markdown_tables(results)}"
    path = Path(out_dir) / "eval.md"
    path.write_text(f"# {SECTION_TITLE}\n\n{body}\n")
    if run_dir is not None:
        add_report_section(run_dir, body)
    return path


def add_report_section(run_dir: str | Path, body: str) -> Path:
    """Put `body` under "## Evaluation suite" at the end of the run's report.md, replacing an earlier one.

    train.report.write_report regenerates the whole report from the training run, so the section is spliced
    into the file as it is (and eval.md keeps a copy that a later rewrite of the report cannot drop)."""
    path = Path(run_dir) / "report.md"
    text = path.read_text() if path.is_file() else ""
    heading = f"## {SECTION_TITLE}"
    if heading in text:
        before, _, after = text.partition(heading)
        following = after.find("\n## ")
        text = before.rstrip("\n") + ("\n" + after[following:].rstrip("\n") if following >= 0 else "")
    path.write_text((text.rstrip("\n") + "\n\n" if text.strip() else "") + f"{heading}\n\n{body}\n")
    return path
