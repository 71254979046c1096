"""Command line: parses arguments, builds a config, calls the library. No logic of its own.

Each subcommand is one `add_<name>_parser` function that declares its arguments and the function it runs.
Each eval protocol declares its own options, each with the keyword argument of the protocol it becomes
(`PROTOCOL_OPTIONS`); `eval all` takes them all. The library is imported inside the functions that use it,
so that `dinolab --help` starts without torch and `dinolab train` without the evaluation's dependencies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinolab import config as config_lib

if TYPE_CHECKING:
    from torch import nn

    from dinolab.hub.loading import Normalization

CHECKPOINT_HELP = "dinolab run dir or checkpoint, or released DINO/iBOT/DINOv2 weights"
Arguments = tuple[tuple[str, ...], dict[str, Any]]  # add_argument's positional and keyword arguments


def _arg(*flags: str, **kwargs: Any) -> Arguments:
    return flags, kwargs


def _parent(*arguments: Arguments) -> argparse.ArgumentParser:
    """A parser that only holds arguments for others to inherit (argparse's `parents=`)."""
    parent = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in arguments:
        parent.add_argument(*flags, **kwargs)
    return parent


QUIET = _arg("--quiet", action="store_true", help="no progress bars or progress log lines")
RUNTIME = (_arg("--device", default="auto"), _arg("--precision", default="auto"))


# ---------------------------------------------------------------- train, demo, config


def _train(args: argparse.Namespace) -> None:
    from dinolab.train import fit

    if args.nproc > 1:
        _train_in_processes(args)
        return

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = config_lib.load(args.config, overrides)  # fit measures the folder itself for small_images (data.auto)
    resume: str | bool = args.resume if args.resume else not args.no_resume
    result = fit(cfg, resume=resume, quiet=args.quiet)
    if result.preempted:
        print(f"stopped by {result.preempted} after saving; run the same command to resume")
    print(f"run directory: {result.run_dir}")


def _train_in_processes(args: argparse.Namespace) -> None:
    """`dinolab train ... --nproc N`: the same command under torchrun on this machine (N processes, DDP)."""
    import subprocess

    argv = [a for a in args.argv if not a.startswith("--nproc")]
    if "--nproc" in args.argv:  # `--nproc N`: drop its value too
        at = args.argv.index("--nproc")
        argv = args.argv[:at] + args.argv[at + 2:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "dinolab", *argv]
    done = subprocess.run(command)
    if done.returncode:
        raise SystemExit(done.returncode)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    recipes = ", ".join(config_lib.available_recipes())
    train = sub.add_parser("train", parents=[_parent(QUIET)], help="pretrain a ViT",
                           description=f"shipped recipes: {recipes}")
    train.add_argument("config", help="recipe name or YAML file")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.epochs=5")
    train.add_argument("--output-dir", help="run directory (same as train.output_dir=...)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint file")
    train.add_argument("--no-resume", action="store_true", help="ignore a checkpoint already in the run dir")
    train.add_argument("--nproc", type=int, default=1,
                       help="processes on this machine (DDP; the same as torchrun --standalone --nproc_per_node N "
                            "-m dinolab train ...); optim.batch_size stays the global batch")
    train.set_defaults(func=_train)


def _demo(args: argparse.Namespace) -> None:
    from dinolab.data.stats import resolve_from_images
    from dinolab.demo import run_demo

    run_demo(resolve_from_images(config_lib.load(args.config, list(args.overrides))), quiet=args.quiet)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", parents=[_parent(QUIET)],
                          help="pretrain on Fashion-MNIST and compare k-NN with baselines")
    demo.add_argument("config", nargs="?", default="dino_vit_tiny_fmnist")
    demo.add_argument("overrides", nargs="*")
    demo.set_defaults(func=_demo)


def _config_show(args: argparse.Namespace) -> None:
    print(config_lib.show(args.config, list(args.overrides)), end="")


def add_config_parser(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="inspect recipes")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser(
        "show", help="print the resolved config (inherited values and overrides applied) as YAML",
        description=f"shipped recipes: {', '.join(config_lib.available_recipes())}",
    )
    show.add_argument("config", help="recipe name or YAML file")
    show.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.epochs=5")
    show.set_defaults(func=_config_show)


def _checkpoint_consolidate(args: argparse.Namespace) -> None:
    from dinolab.train.sharded_checkpoint import consolidate

    print(f"wrote {consolidate(args.run_dir, args.out)}")


def add_checkpoint_parser(sub: argparse._SubParsersAction) -> None:
    checkpoint = sub.add_parser("checkpoint", help="work with training checkpoints")
    checkpoint_sub = checkpoint.add_subparsers(dest="action", required=True)
    consolidate = checkpoint_sub.add_parser(
        "consolidate", help="a sharded checkpoint (checkpoint.dcp/) as one file that resume, eval and hub read")
    consolidate.add_argument("run_dir", help="run directory holding checkpoint.dcp/, or that folder")
    consolidate.add_argument("--out", required=True, help="the .pth file to write")
    consolidate.set_defaults(func=_checkpoint_consolidate)


# ---------------------------------------------------------------- eval


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: `eval all` takes each option once
class ProtocolOption:
    """One keyword argument of an eval protocol: the command-line arguments it is read from, and how."""

    keyword: str
    read: Callable[[argparse.Namespace], Any]
    arguments: tuple[Arguments, ...] = ()  # none: read from the options every protocol shares


def _option(keyword: str, flag: str, convert: Callable[[Any], Any] = lambda value: value,
            **kwargs: Any) -> ProtocolOption:
    """A keyword read from one command-line option, through `convert`."""
    dest = attrgetter(flag.lstrip("-").replace("-", "_"))
    return ProtocolOption(keyword, lambda args: convert(dest(args)), (_arg(flag, **kwargs),))


def _c_grid(args: argparse.Namespace) -> tuple[float, ...]:
    from dinolab.eval.logreg import C_GRID, DINOV2_C_GRID

    return tuple(args.c_grid) if args.c_grid else DINOV2_C_GRID if args.dinov2_c_grid else C_GRID


SEED = ProtocolOption("seed", attrgetter("seed"))
TEMPERATURE = _option("temperature", "--temperature", type=float, default=0.07,
                      help="knn, lowshot knn: vote temperature")
C_GRID = ProtocolOption("c_grid", _c_grid, (
    _arg("--c-grid", type=float, nargs="+", help="logreg, patch: values of C (default 1e-6..1e5)"),
    _arg("--dinov2-c-grid", action="store_true", help="logreg, patch: DINOv2's 45 values of C"),
))
PROTOCOL_OPTIONS: dict[str, tuple[ProtocolOption, ...]] = {
    "knn": (
        _option("ks", "--k", tuple, type=int, nargs="+", default=[10, 20, 100, 200], help="knn: neighbors"),
        TEMPERATURE,
    ),
    "linear": (_option("epochs", "--epochs", type=int, default=10, help="linear: epochs over the features"), SEED),
    "logreg": (C_GRID, SEED),
    "lowshot": (
        _option("budgets", "--budgets", tuple, nargs="+", default=["1%", "10%", "5/class"],
                help="lowshot: P%% or N/class"),
        _option("seeds", "--seeds", tuple, type=int, nargs="+", default=[0, 1, 2],
                help="lowshot: one subset per seed"),
        _option("classifier", "--lowshot-classifier", default="logreg", choices=["logreg", "knn"]),
        _option("C", "--lowshot-c", type=float, default=1.0, help="lowshot logreg: C"),
        _option("k", "--lowshot-k", type=int, default=20, help="lowshot knn: neighbors"),
        TEMPERATURE,
    ),
    "retrieval": (
        _option("backend", "--backend", default="auto", choices=["auto", "torch", "faiss"], help="retrieval search"),
        _option("max_queries", "--queries", lambda n: n or None, type=int, default=2000,
                help="retrieval: test images used as queries (0: all)"),
        SEED,
    ),
    "copydetect": (SEED,),
    "cluster": (_option("restarts", "--restarts", type=int, default=10, help="cluster: k-means restarts"), SEED),
    "patch": (
        _option("max_train_images", "--patch-train-images", lambda n: n or None, type=int, default=5000,
                help="patch: train images (0: all)"),
        C_GRID,
        SEED,
    ),
}
PROTOCOL_HELP = {
    "knn": "weighted k-NN classification (T=0.07)",
    "linear": "DINOv2 linear-probe grid: lr x {1, 4 blocks} x {[CLS], +avgpool}, best on validation",
    "logreg": "logistic regression (L-BFGS), C chosen on validation",
    "lowshot": "1%%, 10%%, N/class labels, several seeds: mean +- std",
    "retrieval": "recall@1/5/10 and mAP, test queries against the training gallery",
    "copydetect": "edited copies (crop, blur, color, JPEG) retrieving their originals",
    "cluster": "k-means: Hungarian accuracy, NMI, ARI",
    "patch": "linear probe on patch tokens, garment vs background, mIoU",
    "all": "every protocol; JSON per protocol, tables in eval.md and the run's report.md",
}


def protocol_keywords(protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments `protocol` runs with, read from parsed command-line arguments."""
    return {option.keyword: option.read(args) for option in PROTOCOL_OPTIONS[protocol]}


def _eval_datasets(args: argparse.Namespace, cfg: config_lib.Config) -> tuple:
    """--data fmnist|ROOT (ROOT/train, ROOT/test) or --train/--test DATA; the test split numbers classes like train."""
    from dinolab.data.loader import build_eval_dataset

    if args.data:
        root = Path(args.data)
        train, test = ("fmnist", "fmnist") if args.data == "fmnist" else (root / "train", root / "test")
        train, test = args.train or train, args.test or test
    elif args.train and args.test:
        train, test = args.train, args.test
    else:
        raise ValueError("say which data to evaluate on: --data fmnist|FOLDER, or both --train DATA and --test DATA")

    def build(spec: str | Path, split: str, classes: tuple[str, ...] | None = None):
        fmnist = str(spec) == "fmnist"
        data_cfg = dataclasses.replace(
            cfg.data, dataset="fmnist" if fmnist else "folder", path=args.fmnist_dir or "",
            global_crops_size=args.image_size or cfg.data.global_crops_size,
        )
        return build_eval_dataset(data_cfg, cfg.model.in_chans, split, None if fmnist else spec, classes=classes)

    train_ds = build(train, "train")
    return train_ds, build(test, "test", classes=train_ds.classes)


def _eval(args: argparse.Namespace) -> None:
    from dinolab.device import resolve
    from dinolab.eval.suite import PROTOCOLS, Evaluation, model_to_evaluate, run_all, summary_line
    from dinolab.eval.tokens import Preprocess

    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    if args.out and args.out.endswith(".json") and (args.protocol == "all" or len(args.model) > 1):
        raise ValueError("--out FILE.json takes one protocol on one model; give a folder for several results")
    options = {protocol: protocol_keywords(protocol, args) for protocol in protocols}
    results: dict[str, dict[str, dict]] = {}
    for kind in args.model:
        model, cfg = model_to_evaluate(args.checkpoint, kind, args.seed)
        cfg.data.mean, cfg.data.std = _normalization(args, cfg)
        if not results:
            train_ds, test_ds = _eval_datasets(args, cfg)
        evaluation = Evaluation(
            model, train_ds, test_ds, cfg.data.mean, cfg.data.std, cfg.model.patch_size,
            Preprocess(args.resize, args.crop), args.batch_size, resolve(args.device, args.precision), args.cache_dir,
            args.quiet,
        )
        if args.protocol == "all":
            results[kind] = run_all(evaluation, options)
        else:
            results[kind] = {args.protocol: evaluation.run(args.protocol, **options[args.protocol])}
        for protocol in protocols:
            print(f"[{kind}] {summary_line(protocol, results[kind][protocol])}")
    _write_eval_results(args, results, f"{len(train_ds)} training and {len(test_ds)} test images")


def _normalization(args: argparse.Namespace, cfg: config_lib.Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """--mean / --std over the loaded model's normalization: a `.pth` backbone file carries no training
    config, so the one it was trained with must be given again (safetensors exports record it)."""
    from dinolab.hub.loading import checked_normalization

    return checked_normalization((args.mean or cfg.data.mean, args.std or cfg.data.std), cfg.model.in_chans,
                                 "--mean/--std")


def _write_eval_results(args: argparse.Namespace, results: dict[str, dict[str, dict]], images: str) -> None:
    """One protocol's JSON to --out FILE.json; else JSON per model and protocol in a folder, with the tables
    (eval.md, and the run's report.md where the results went to the default RUN_DIR/eval) for `eval all`."""
    from dinolab.eval.suite import write_markdown, write_results

    if args.out and args.out.endswith(".json"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results[args.model[0]][args.protocol], indent=1))
        return
    checkpoint = Path(args.checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    out_dir = Path(args.out) if args.out else run_dir / "eval"
    write_results(results, out_dir)
    if args.protocol == "all":
        note = (f"`dinolab eval all` on {images}, checkpoint {checkpoint}; scores in %, one JSON per model and "
                f"protocol in {out_dir}/.")
        write_markdown(results, out_dir, note, None if args.out else run_dir)
    print(f"results in {out_dir}")


def _eval_shared_options() -> argparse.ArgumentParser:
    """What every protocol takes: the model, the data, where results go, how features are extracted."""
    return _parent(
        _arg("--checkpoint", required=True, help=CHECKPOINT_HELP),
        _arg("--data", help="'fmnist', or a folder with train/ and test/ class folders"),
        _arg("--train", help="training data: 'fmnist' or a folder of class folders (overrides --data)"),
        _arg("--test", help="test data: 'fmnist' or a folder of class folders (overrides --data)"),
        _arg("--fmnist-dir", default=None, help="folder of the Fashion-MNIST IDX files"),
        _arg("--image-size", type=int, default=0, help="folder images: crop size (default: global crop)"),
        _arg("--resize", type=int, default=0, help="test-time resize of the shorter side (0: none)"),
        _arg("--crop", type=int, default=0, help="test-time center crop after --resize (0: none)"),
        _arg("--mean", type=float, nargs="+", help="input normalization, one value per channel (default: the run's "
             "training config; ImageNet's for released RGB weights, 0.5 for other files)"),
        _arg("--std", type=float, nargs="+", help="see --mean"),
        _arg("--model", nargs="+", default=["trained"], choices=["trained", "random-init", "pixels"],
             help="what to evaluate: the checkpoint's teacher, its architecture at random init, raw pixels; "
                  "several give one column each"),
        _arg("--out", help="results folder (default: RUN_DIR/eval), or FILE.json for one protocol"),
        _arg("--cache-dir", help="keep extracted features here (memory-mapped .npy)"),
        _arg("--batch-size", type=int, default=256),
        *RUNTIME,
        _arg("--seed", type=int, default=0, help="validation splits, subsets, k-means, copies, init"),
        QUIET,
    )


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate frozen features (k-NN, linear, logreg, low-shot, retrieval, ...)")
    ev_sub = ev.add_subparsers(dest="protocol", required=True)
    shared = _eval_shared_options()
    every_option = list(dict.fromkeys(o for options in PROTOCOL_OPTIONS.values() for o in options))
    for protocol, help_text in PROTOCOL_HELP.items():
        parser = ev_sub.add_parser(protocol, parents=[shared], help=help_text)
        for option in every_option if protocol == "all" else PROTOCOL_OPTIONS[protocol]:
            for flags, kwargs in option.arguments:
                parser.add_argument(*flags, **kwargs)
        parser.set_defaults(func=_eval)


# ---------------------------------------------------------------- viz, explore


def _viz_attention(args: argparse.Namespace) -> None:
    from dinolab.viz.attention import write_attention_figures
    from dinolab.viz.inputs import VizModel, expand_image_paths

    model = VizModel.from_checkpoint(args.checkpoint)
    for path in write_attention_figures(model, expand_image_paths(args.images), args.out, args.image_size, args.mass):
        print(path)


def _viz_pca(args: argparse.Namespace) -> None:
    from dinolab.viz.inputs import VizModel, expand_image_paths
    from dinolab.viz.pca import write_pca_figures

    model = VizModel.from_checkpoint(args.checkpoint)
    for path in write_pca_figures(model, expand_image_paths(args.images), args.out, args.image_size, args.threshold):
        print(path)


def _viz_curves(args: argparse.Namespace) -> None:
    from dinolab.viz.curves import save_curves

    paths = save_curves(args.run_dir, args.out)
    if not paths:
        raise ValueError(f"{args.run_dir}: no logged steps in metrics.jsonl (is it a dinolab run directory?)")
    for path in paths:
        print(path)


def add_viz_parser(sub: argparse._SubParsersAction) -> None:
    viz = sub.add_parser("viz", help="attention maps, PCA feature maps, training curves (PNG)")
    viz_sub = viz.add_subparsers(dest="figure", required=True)
    crop_note = "Images are center-cropped to a multiple of the patch size; a folder stands for its images."
    images = _parent(
        _arg("images", nargs="+", help="image files or folders"),
        _arg("--checkpoint", required=True, help=CHECKPOINT_HELP),
        _arg("--out", default="viz", help="output folder (default: viz)"),
        _arg("--image-size", type=int, default=None,
             help="resize the shorter side to this and center-crop a square (default: keep the size)"),
    )
    attention = viz_sub.add_parser(
        "attention", parents=[images], description=crop_note,
        help="per-head [CLS] attention of the last block and its mass masks",
    )
    attention.add_argument("--mass", type=float, default=0.6, help="attention mass the masks keep (default 0.6)")
    attention.set_defaults(func=_viz_attention)
    pca = viz_sub.add_parser(
        "pca", parents=[images], description=crop_note + " One PCA over all the images.",
        help="DINOv2 PCA of patch features: foreground split and RGB parts",
    )
    pca.add_argument("--threshold", type=float, default=0.5, help="foreground threshold on the [0, 1] first PC")
    pca.set_defaults(func=_viz_pca)
    curves = viz_sub.add_parser("curves", help="loss, lr, teacher temperature / entropy, KL, k-NN over training")
    curves.add_argument("run_dir", help="run directory holding metrics.jsonl")
    curves.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")
    curves.set_defaults(func=_viz_curves)


def _explore(args: argparse.Namespace) -> None:
    from dinolab.viz.explorer import build_explorer, serve
    from dinolab.viz.inputs import VizModel, expand_image_paths

    model = VizModel.from_checkpoint(args.checkpoint)
    out = build_explorer(
        model, expand_image_paths(args.images), args.out, args.image_size, args.max_images, args.max_megabytes
    )
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MB)")
    if args.serve:
        server = serve(out, port=args.port)
        print(f"serving http://{server.server_address[0]}:{server.server_address[1]}/{out.name} (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def add_explore_parser(sub: argparse._SubParsersAction) -> None:
    explore = sub.add_parser(
        "explore", help="write a self-contained HTML explorer of patch similarity, attention and PCA",
        description="Images are resized and center-cropped to one square size (default: the model's training size).",
    )
    explore.add_argument("images", nargs="+", help="image files or folders")
    explore.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    explore.add_argument("--out", default="explorer.html", help="HTML file to write (default: explorer.html)")
    explore.add_argument("--image-size", type=int, default=None, help="square image side (default: training size)")
    explore.add_argument("--max-images", type=int, default=1000, help="show at most this many (evenly spaced)")
    explore.add_argument("--max-megabytes", type=float, default=50, help="keep the file under about this size")
    explore.add_argument("--serve", action="store_true", help="then serve it on http://127.0.0.1:PORT")
    explore.add_argument("--port", type=int, default=8000)
    explore.set_defaults(func=_explore)


# ---------------------------------------------------------------- export, embed


BACKBONE = (
    _arg("--checkpoint", required=True,
         help="weights: official DINO / iBOT / DINOv2 file, HF or timm state dict, dinolab checkpoint or run dir, "
              "safetensors export, or URL"),
    _arg("--arch", default=None,
         help="architecture name (e.g. dinov2_vits14); default: recorded in or inferred from the file"),
    _arg("--entry", default=None, help="checkpoint entry holding the weights (default: teacher)"),
)


def _export_source(args: argparse.Namespace) -> tuple[nn.Module, Normalization | None]:
    """(backbone, its training normalization (mean, std) or None when the file does not say) for an export."""
    from dinolab.hub import load_model

    loaded = load_model(args.checkpoint, arch=args.arch, entry=args.entry)
    data = loaded.config.data
    return loaded.backbone, ((data.mean, data.std) if loaded.normalization_known else None)


def _recorded(normalization: Normalization | None) -> str:
    return f"normalization mean {list(normalization[0])} std {list(normalization[1])}" if normalization else ""


def _export_safetensors(args: argparse.Namespace) -> None:
    from dinolab.hub import save_backbone

    model, normalization = _export_source(args)
    path = save_backbone(model, args.out, layout=args.layout, normalization=normalization)
    recorded = f", {_recorded(normalization)}" if normalization and path.suffix == ".safetensors" else ""
    print(f"wrote {path} ({args.layout} layout{recorded})")


def _export_onnx(args: argparse.Namespace) -> None:
    from dinolab.hub.export import export_onnx, verify_onnx

    model, normalization = _export_source(args)
    path = export_onnx(model, args.out, image_size=args.image_size, opset=args.opset, normalization=normalization)
    recorded = f"; {_recorded(normalization)}" if normalization else ""
    print(f"wrote {path} (inputs: pixel_values (batch, {model.in_chans}, height, width), height and width "
          f"multiples of {model.patch_size}; outputs: cls, patch_tokens{recorded})")
    if not args.no_verify:
        p, s = model.patch_size, args.image_size
        sizes = [(2, s, s), (1, s + 2 * p, max(p, s - 4 * p))]  # the traced size and another, non-square one
        for shape, diff in verify_onnx(model, path, sizes).items():
            print(f"onnxruntime vs PyTorch at {shape}: max abs diff {diff:.2e}")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a backbone (safetensors, ONNX)")
    export_sub = export.add_subparsers(dest="format", required=True)
    st = export_sub.add_parser("safetensors", parents=[_parent(*BACKBONE)],
                               help="weights only, in an official key layout, architecture in metadata")
    st.add_argument("--out", required=True, help="output .safetensors (or .pth) file")
    st.add_argument("--layout", default="dinov2", choices=["dinov2", "dino", "hf", "timm"])
    st.set_defaults(func=_export_safetensors)
    onnx = export_sub.add_parser("onnx", parents=[_parent(*BACKBONE)],
                                 help="ONNX graph, dynamic batch and image size, checked with onnxruntime")
    onnx.add_argument("--out", required=True, help="output .onnx file")
    onnx.add_argument("--image-size", type=int, default=224, help="size of the example input used for tracing")
    onnx.add_argument("--opset", type=int, default=18)
    onnx.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch check")
    onnx.set_defaults(func=_export_onnx)


def _embed(args: argparse.Namespace) -> None:
    from dinolab.device import resolve
    from dinolab.hub import load_model
    from dinolab.hub.embed import embed_folder

    loaded = load_model(args.checkpoint, arch=args.arch, entry=args.entry)
    mean, std = _normalization(args, loaded.config)
    out = embed_folder(
        loaded.backbone, args.folder, args.out, image_size=args.image_size, features=tuple(args.features),
        batch_size=args.batch_size, chunk_size=args.chunk_size, mean=mean, std=std,
        runtime=resolve(args.device, args.precision), num_workers=args.num_workers, resume=not args.no_resume,
        quiet=args.quiet,
    )
    print(f"wrote {out}")


def add_embed_parser(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", parents=[_parent(*BACKBONE, *RUNTIME, QUIET)],
                           help="embed every image of a folder (resumable)")
    embed.add_argument("folder", help="folder of images (searched recursively)")
    embed.add_argument("--out", required=True, help="feats.npy (+ feats.npy.paths.txt) or feats.parquet")
    embed.add_argument("--features", nargs="+", default=["cls"], choices=["cls", "patch_mean"],
                       help="columns, in this order: normalized [CLS] token, mean of the normalized patch tokens")
    embed.add_argument("--image-size", type=int, default=224,
                       help="shorter side resized to this, then center-cropped square (rounded down to a multiple "
                            "of the patch size)")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--chunk-size", type=int, default=1024, help="images per resumable chunk")
    embed.add_argument("--mean", type=float, nargs="+",
                       help="input normalization, one value per channel (default: the run's training config or the "
                            "one recorded in a safetensors export; ImageNet's for released RGB weights, 0.5 otherwise)")
    embed.add_argument("--std", type=float, nargs="+", help="see --mean")
    embed.add_argument("--num-workers", type=int, default=0)
    embed.add_argument("--no-resume", action="store_true", help="start over even if unfinished work is found")
    embed.set_defaults(func=_embed)


# ---------------------------------------------------------------- curate


def _curate(args: argparse.Namespace) -> None:
    from dinolab.curate import CurateSettings, curate
    from dinolab.device import resolve

    settings = CurateSettings(
        dedup_threshold=args.dedup_threshold, dedup_neighbors=args.dedup_neighbors,
        exclude_threshold=args.exclude_threshold, retrieve=args.retrieve,
        neighbors=args.neighbors, retrieval_clusters=args.retrieval_clusters, per_cluster=args.per_cluster,
        balance=args.balance, clusters=tuple(args.clusters), target=args.target, search=args.search,
        nprobe=args.nprobe, random_seed=args.random_seed,
    )
    report = curate(args.pool, args.out, args.checkpoint, args.seed, args.exclude or (), settings, args.image_size,
                    args.batch_size, resolve(args.device, args.precision), args.arch, args.entry, args.quiet,
                    args.symlinks)
    print(report.summary())
    links = f", symlinks in {args.symlinks}" if args.symlinks else ""
    print(f"wrote {args.out} and {report.outputs['report']}{links}; train on it with data.file_list={args.out}")


def _cluster_counts(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cluster counts like 1000,100, got {text!r}") from None


def add_curate_parser(sub: argparse._SubParsersAction) -> None:
    curate = sub.add_parser(
        "curate", parents=[_parent(*BACKBONE, *RUNTIME, QUIET)],
        help="curate an image pool: deduplicate, decontaminate, retrieve near a seed set, balance (DINOv2)",
        description="Writes the kept paths to --out (one per line), OUT.report.json (sizes, timing, examples), "
                    "OUT.duplicates.txt (every duplicate group, kept image first); embeddings stay in OUT.work/ "
                    "and are reused by later runs. Similarities are cosine, on the normalized [CLS] token.",
    )
    curate.add_argument("--pool", required=True, help="folder of uncurated images (searched recursively)")
    curate.add_argument("--out", required=True, help="file list to write, e.g. curated.txt (train: data.file_list=)")
    curate.add_argument("--symlinks", help="also a folder of symlinks to the curated images (new, empty, or an "
                                           "earlier run's: its links are replaced)")
    curate.add_argument("--seed", help="folder of curated images: keep the pool images nearest to them")
    curate.add_argument("--exclude", nargs="+", help="evaluation image folders: drop pool images close to them")
    curate.add_argument("--dedup-threshold", type=float, default=0.95,
                        help="near-duplicates: cosine similarity at or above this (default 0.95)")
    curate.add_argument("--dedup-neighbors", type=int, default=32,
                        help="near-duplicates are looked for among each image's this many nearest (default 32)")
    curate.add_argument("--exclude-threshold", type=float, default=0.95,
                        help="drop pool images this similar to an --exclude image (default 0.95)")
    curate.add_argument("--retrieve", default="auto", choices=["auto", "image", "cluster"],
                        help="with --seed: N nearest per seed image, or the pool clusters nearest to the seeds "
                             "(auto: per image from 1000 seed images on)")
    curate.add_argument("--neighbors", type=int, default=4, help="per-image retrieval: pool images per seed image")
    curate.add_argument("--retrieval-clusters", type=int, help="cluster retrieval: pool clusters (default sqrt(N))")
    curate.add_argument("--per-cluster", type=int, help="cluster retrieval: images per picked cluster (default all)")
    curate.add_argument("--balance", choices=["kmeans"], help="balance by hierarchical k-means to --target images")
    curate.add_argument("--clusters", type=_cluster_counts, default=[1000, 100],
                        help="balance: clusters per level, finest first (default 1000,100)")
    curate.add_argument("--target", type=int, help="balance: images to keep")
    curate.add_argument("--search", default="auto", choices=["auto", "exact", "faiss", "flat", "ivf", "ivfpq"],
                        help="auto: exact (torch) below 50000 images, then faiss flat (exact), IVF from 200000, "
                             "IVF-PQ from 10M; faiss: the same index choice at any size; flat/ivf/ivfpq: that index")
    curate.add_argument("--nprobe", type=int, default=32,
                        help="IVF indexes: inverted lists searched per query (higher: slower, better recall)")
    curate.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's training size")
    curate.add_argument("--batch-size", type=int, default=64)
    curate.add_argument("--random-seed", type=int, default=0, help="k-means and sampling")
    curate.set_defaults(func=_curate)


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinolab", description="DINO-family self-supervised ViT pretraining")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train_parser, add_demo_parser, add_config_parser, add_checkpoint_parser, add_eval_parser,
                add_viz_parser, add_explore_parser, add_export_parser, add_embed_parser, add_curate_parser):
        add(sub)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """dinolab's loggers at INFO (DEBUG with --verbose) on stderr; other libraries' (faiss's loader, matplotlib,
    PIL, ...) only from WARNING, so that their chatter does not read as something gone wrong."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dinolab").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(args.verbose)
    from dinolab.hub.export import MissingExtraError
    from dinolab.io import CheckpointError
    from dinolab.train import NonFiniteLossError

    try:
        args.func(args)
    except (config_lib.ConfigError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError,
            MissingExtraError) as err:
        print(f"dinolab: error: {err}", file=sys.stderr)
        return 1
    return 0
