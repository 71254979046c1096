"""Command line: parses arguments, builds a config, calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from dinolab import config as config_lib
from dinolab.config import ConfigError
from dinolab.io import CheckpointError


def _train(args: argparse.Namespace) -> None:
    from dinolab.train import fit

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = config_lib.load(args.config, overrides)
    resume: str | bool = args.resume if args.resume else not args.no_resume
    result = fit(cfg, resume=resume, quiet=args.quiet)
    print(f"run directory: {result.run_dir}")


def _demo(args: argparse.Namespace) -> None:
    from dinolab.demo import run_demo

    run_demo(config_lib.load(args.config, list(args.overrides)), quiet=args.quiet)


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


def _eval_options(args: argparse.Namespace) -> dict[str, dict]:
    from dinolab.eval.logreg import C_GRID, DINOV2_C_GRID

    c_grid = tuple(args.c_grid) if args.c_grid else DINOV2_C_GRID if args.dinov2_c_grid else C_GRID
    return {
        "knn": {"ks": tuple(args.k), "temperature": args.temperature},
        "linear": {"epochs": args.epochs, "seed": args.seed},
        "logreg": {"c_grid": c_grid, "seed": args.seed},
        "lowshot": {"budgets": tuple(args.budgets), "seeds": tuple(args.seeds), "classifier": args.lowshot_classifier,
                    "C": args.lowshot_c, "k": args.lowshot_k, "temperature": args.temperature},
        "retrieval": {"backend": args.backend, "max_queries": args.queries or None, "seed": args.seed},
        "copydetect": {"seed": args.seed},
        "cluster": {"restarts": args.restarts, "seed": args.seed},
        "patch": {"max_train_images": args.patch_train_images or None, "c_grid": c_grid, "seed": args.seed},
    }


def _eval(args: argparse.Namespace) -> None:
    from dinolab.device import resolve
    from dinolab.eval.features import Preprocess
    from dinolab.eval.suite import (
        PROTOCOLS,
        Evaluation,
        load_backbone,
        run_all,
        summary_line,
        write_markdown,
        write_results,
    )

    options = _eval_options(args)
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    if args.out and args.out.endswith(".json") and (args.protocol == "all" or len(args.model) > 1):
        raise ValueError("--out FILE.json takes one protocol on one model; give a folder for several results")
    results: dict[str, dict[str, dict]] = {}
    for kind in args.model:
        model, cfg = load_backbone(args.checkpoint, kind, args.seed)
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
    if args.out and args.out.endswith(".json"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results[args.model[0]][args.protocol], indent=1))
        return
    checkpoint = Path(args.checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    out_dir = Path(args.out) if args.out else run_dir / "eval"
    write_results(results, out_dir)
    if args.protocol == "all":
        note = (f"`dinolab eval all` on {len(train_ds)} training and {len(test_ds)} test images, checkpoint "
                f"{checkpoint}; scores in %, one JSON per model and protocol in {out_dir}/.")
        write_markdown(results, out_dir, note, None if args.out else run_dir)
    print(f"results in {out_dir}")


def _viz_attention(args: argparse.Namespace) -> None:
    from dinolab.viz.attention import write_attention_figures
    from dinolab.viz.inputs import expand_image_paths, load_model

    model = load_model(args.checkpoint)
    for path in write_attention_figures(model, expand_image_paths(args.images), args.out, args.image_size, args.mass):
        print(path)


def _viz_pca(args: argparse.Namespace) -> None:
    from dinolab.viz.inputs import expand_image_paths, load_model
    from dinolab.viz.pca import write_pca_figures

    model = load_model(args.checkpoint)
    for path in write_pca_figures(model, expand_image_paths(args.images), args.out, args.image_size, args.threshold):
        print(path)


def _viz_curves(args: argparse.Namespace) -> None:
    from dinolab.viz.curves import save_curves

    paths = save_curves(args.run_dir, args.out)
    if not paths:
        raise ValueError(f"{args.run_dir}: no logged steps in metrics.jsonl (is it a dinolab run directory?)")
    for path in paths:
        print(path)


def _explore(args: argparse.Namespace) -> None:
    from dinolab.viz.explorer import build_explorer, serve
    from dinolab.viz.inputs import expand_image_paths, load_model

    model = load_model(args.checkpoint)
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


def _load_backbone_arg(args: argparse.Namespace):
    from dinolab.hub import load_backbone

    return load_backbone(args.checkpoint, arch=args.arch, entry=args.entry)


def _export_safetensors(args: argparse.Namespace) -> None:
    from dinolab.hub import save_backbone

    path = save_backbone(_load_backbone_arg(args), args.out, layout=args.layout)
    print(f"wrote {path} ({args.layout} layout)")


def _export_onnx(args: argparse.Namespace) -> None:
    from dinolab.hub.export import export_onnx, verify_onnx

    model = _load_backbone_arg(args)
    path = export_onnx(model, args.out, image_size=args.image_size, opset=args.opset)
    print(f"wrote {path} (inputs: pixel_values (batch, {model.in_chans}, height, width), height and width "
          f"multiples of {model.patch_size}; outputs: cls, patch_tokens)")
    if not args.no_verify:
        p, s = model.patch_size, args.image_size
        sizes = [(2, s, s), (1, s + 2 * p, max(p, s - 4 * p))]  # the traced size and another, non-square one
        for shape, diff in verify_onnx(model, path, sizes).items():
            print(f"onnxruntime vs PyTorch at {shape}: max abs diff {diff:.2e}")


def _embed(args: argparse.Namespace) -> None:
    from dinolab.device import resolve
    from dinolab.hub.embed import embed_folder

    out = embed_folder(
        _load_backbone_arg(args), args.folder, args.out, image_size=args.image_size, features=tuple(args.features),
        batch_size=args.batch_size, chunk_size=args.chunk_size, mean=tuple(args.mean), std=tuple(args.std),
        runtime=resolve(args.device, args.precision), num_workers=args.num_workers, resume=not args.no_resume,
        quiet=args.quiet,
    )
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinolab", description="DINO-family self-supervised ViT pretraining")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    recipes = ", ".join(config_lib.available_recipes())
    train = sub.add_parser("train", help="pretrain a ViT", description=f"shipped recipes: {recipes}")
    train.add_argument("config", help="recipe name or YAML file")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.epochs=5")
    train.add_argument("--output-dir", help="run directory (same as train.output_dir=...)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint file")
    train.add_argument("--no-resume", action="store_true", help="ignore a checkpoint already in the run dir")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)

    demo = sub.add_parser("demo", help="pretrain on Fashion-MNIST and compare k-NN with baselines")
    demo.add_argument("config", nargs="?", default="dino_vit_tiny_fmnist")
    demo.add_argument("overrides", nargs="*")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_demo)

    checkpoint_help = "dinolab run dir or checkpoint, or released DINO/iBOT/DINOv2 weights"
    ev = sub.add_parser("eval", help="evaluate frozen features (k-NN, linear, logreg, low-shot, retrieval, ...)")
    ev_sub = ev.add_subparsers(dest="protocol", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help=checkpoint_help)
    common.add_argument("--data", help="'fmnist', or a folder with train/ and test/ class folders")
    common.add_argument("--train", help="training data: 'fmnist' or a folder of class folders (overrides --data)")
    common.add_argument("--test", help="test data: 'fmnist' or a folder of class folders (overrides --data)")
    common.add_argument("--fmnist-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    common.add_argument("--image-size", type=int, default=0, help="folder images: crop size (default: global crop)")
    common.add_argument("--resize", type=int, default=0, help="test-time resize of the shorter side (0: none)")
    common.add_argument("--crop", type=int, default=0, help="test-time center crop after --resize (0: none)")
    common.add_argument("--model", nargs="+", default=["trained"], choices=["trained", "random-init", "pixels"],
                        help="what to evaluate: the checkpoint's teacher, its architecture at random init, raw "
                             "pixels; several give one column each")
    common.add_argument("--out", help="results folder (default: RUN_DIR/eval), or FILE.json for one protocol")
    common.add_argument("--cache-dir", help="keep extracted features here (memory-mapped .npy)")
    common.add_argument("--batch-size", type=int, default=256)
    common.add_argument("--device", default="auto")
    common.add_argument("--precision", default="auto")
    common.add_argument("--seed", type=int, default=0, help="validation splits, subsets, k-means, copies, init")
    common.add_argument("--quiet", action="store_true")
    common.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200], help="knn: neighbors")
    common.add_argument("--temperature", type=float, default=0.07, help="knn, lowshot knn: vote temperature")
    common.add_argument("--epochs", type=int, default=10, help="linear: epochs over the features")
    common.add_argument("--c-grid", type=float, nargs="+", help="logreg, patch: values of C (default 1e-6..1e5)")
    common.add_argument("--dinov2-c-grid", action="store_true", help="logreg, patch: DINOv2's 45 values of C")
    common.add_argument("--budgets", nargs="+", default=["1%", "10%", "5/class"], help="lowshot: P%% or N/class")
    common.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="lowshot: one subset per seed")
    common.add_argument("--lowshot-classifier", default="logreg", choices=["logreg", "knn"])
    common.add_argument("--lowshot-c", type=float, default=1.0, help="lowshot logreg: C")
    common.add_argument("--lowshot-k", type=int, default=20, help="lowshot knn: neighbors")
    common.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss"], help="retrieval search")
    common.add_argument("--queries", type=int, default=2000, help="retrieval: test images used as queries (0: all)")
    common.add_argument("--restarts", type=int, default=10, help="cluster: k-means restarts")
    common.add_argument("--patch-train-images", type=int, default=5000, help="patch: train images (0: all)")
    for name, help_text in (
        ("knn", "weighted k-NN classification (T=0.07)"),
        ("linear", "DINOv2 linear-probe grid: lr x {1, 4 blocks} x {[CLS], +avgpool}, best on validation"),
        ("logreg", "logistic regression (L-BFGS), C chosen on validation"),
        ("lowshot", "1%%, 10%%, N/class labels, several seeds: mean +- std"),
        ("retrieval", "recall@1/5/10 and mAP, test queries against the training gallery"),
        ("copydetect", "edited copies (crop, blur, color, JPEG) retrieving their originals"),
        ("cluster", "k-means: Hungarian accuracy, NMI, ARI"),
        ("patch", "linear probe on patch tokens, garment vs background, mIoU"),
        ("all", "every protocol; JSON per protocol, tables in eval.md and the run's report.md"),
    ):
        ev_sub.add_parser(name, parents=[common], help=help_text).set_defaults(func=_eval)

    viz = sub.add_parser("viz", help="attention maps, PCA feature maps, training curves (PNG)")
    viz_sub = viz.add_subparsers(dest="figure", required=True)
    size_help = "resize the shorter side to this and center-crop a square (default: keep the size)"
    crop_note = "Images are center-cropped to a multiple of the patch size; a folder stands for its images."
    images_common = argparse.ArgumentParser(add_help=False)
    images_common.add_argument("images", nargs="+", help="image files or folders")
    images_common.add_argument("--checkpoint", required=True, help=checkpoint_help)
    images_common.add_argument("--out", default="viz", help="output folder (default: viz)")
    images_common.add_argument("--image-size", type=int, default=None, help=size_help)
    attention = viz_sub.add_parser(
        "attention", parents=[images_common], description=crop_note,
        help="per-head [CLS] attention of the last block and its mass masks",
    )
    attention.add_argument("--mass", type=float, default=0.6, help="attention mass the masks keep (default 0.6)")
    attention.set_defaults(func=_viz_attention)
    pca = viz_sub.add_parser(
        "pca", parents=[images_common], description=crop_note + " One PCA over all the images.",
        help="DINOv2 PCA of patch features: foreground split and RGB parts",
    )
    pca.add_argument("--threshold", type=float, default=0.5, help="foreground threshold on the [0, 1] first PC")
    pca.set_defaults(func=_viz_pca)
    curves = viz_sub.add_parser("curves", help="loss, lr, teacher temperature / entropy, KL, k-NN over training")
    curves.add_argument("run_dir", help="run directory holding metrics.jsonl")
    curves.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")
    curves.set_defaults(func=_viz_curves)

    explore = sub.add_parser(
        "explore", help="write a self-contained HTML explorer of patch similarity, attention and PCA",
        description="Images are resized and center-cropped to one square size (default: the model's training size).",
    )
    explore.add_argument("images", nargs="+", help="image files or folders")
    explore.add_argument("--checkpoint", required=True, help=checkpoint_help)
    explore.add_argument("--out", default="explorer.html", help="HTML file to write (default: explorer.html)")
    explore.add_argument("--image-size", type=int, default=None, help="square image side (default: training size)")
    explore.add_argument("--max-images", type=int, default=1000, help="show at most this many (evenly spaced)")
    explore.add_argument("--max-megabytes", type=float, default=50, help="keep the file under about this size")
    explore.add_argument("--serve", action="store_true", help="then serve it on http://127.0.0.1:PORT")
    explore.add_argument("--port", type=int, default=8000)
    explore.set_defaults(func=_explore)
    def backbone_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True,
                       help="weights: official DINO / iBOT / DINOv2 file, HF or timm state dict, dinolab checkpoint "
                            "or run dir, safetensors export, or URL")
        p.add_argument("--arch", default=None,
                       help="architecture name (e.g. dinov2_vits14); default: recorded in or inferred from the file")
        p.add_argument("--entry", default=None, help="checkpoint entry holding the weights (default: teacher)")

    export = sub.add_parser("export", help="export a backbone (safetensors, ONNX)")
    export_sub = export.add_subparsers(dest="format", required=True)
    st = export_sub.add_parser("safetensors", help="weights only, in an official key layout, architecture in metadata")
    backbone_args(st)
    st.add_argument("--out", required=True, help="output .safetensors (or .pth) file")
    st.add_argument("--layout", default="dinov2", choices=["dinov2", "dino", "hf", "timm"])
    st.set_defaults(func=_export_safetensors)
    onnx = export_sub.add_parser("onnx", help="ONNX graph, dynamic batch and image size, checked with onnxruntime")
    backbone_args(onnx)
    onnx.add_argument("--out", required=True, help="output .onnx file")
    onnx.add_argument("--image-size", type=int, default=224, help="size of the example input used for tracing")
    onnx.add_argument("--opset", type=int, default=18)
    onnx.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch check")
    onnx.set_defaults(func=_export_onnx)

    embed = sub.add_parser("embed", help="embed every image of a folder (resumable)")
    embed.add_argument("folder", help="folder of images (searched recursively)")
    backbone_args(embed)
    embed.add_argument("--out", required=True, help="feats.npy (+ feats.npy.paths.txt) or feats.parquet")
    embed.add_argument("--features", nargs="+", default=["cls"], choices=["cls", "patch_mean"],
                       help="columns, in this order: normalized [CLS] token, mean of the normalized patch tokens")
    embed.add_argument("--image-size", type=int, default=224,
                       help="shorter side resized to this, then center-cropped square (rounded down to a multiple "
                            "of the patch size)")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--chunk-size", type=int, default=1024, help="images per resumable chunk")
    embed.add_argument("--mean", type=float, nargs="+", default=[0.485, 0.456, 0.406])
    embed.add_argument("--std", type=float, nargs="+", default=[0.229, 0.224, 0.225])
    embed.add_argument("--num-workers", type=int, default=0)
    embed.add_argument("--device", default="auto")
    embed.add_argument("--precision", default="auto")
    embed.add_argument("--no-resume", action="store_true", help="start over even if unfinished work is found")
    embed.add_argument("--quiet", action="store_true")
    embed.set_defaults(func=_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from dinolab.hub.export import MissingExtraError
    from dinolab.train import NonFiniteLossError

    try:
        args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError,
            MissingExtraError) as err:
        print(f"dinolab: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
