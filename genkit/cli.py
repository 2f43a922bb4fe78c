"""`genkit` command line: train, reconstruct (and the commands of each family).

Only the standard library and the config are imported here: `genkit --help` and argument errors never wait for torch,
datasets or diffusers; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .config import ConfigError, TrainConfig

MAX_GRID_IMAGES = 1024  # `genkit sample` writes one grid; more images than this is no longer a picture
MAX_STEPS = 10_000  # inference steps: far past where any scheduler stops improving, and still minutes, not days
DEVICE_HELP = "cuda, cpu, cuda:1, ... (default: cuda when available)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="genkit", description="Train, evaluate and sample image generative models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML/JSON config file (see training/configs/)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. data.subset=1000 max_steps=200 (repeatable: every --set adds to the others)")
    p.add_argument("--output-dir", help="run directory (overrides output_dir)")
    p.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    p.add_argument("--overwrite", action="store_true", help="train into an output_dir that already holds a run")
    p.add_argument("--no-lock", action="store_true",
                   help="do not lock the output_dir (for filesystems without file locks); make sure no other genkit train uses it")

    p = sub.add_parser("reconstruct", help="reconstruct test images with a trained autoencoder; print the test MSE")
    p.add_argument("run", help="run directory or Hub repo id")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: the run's)")
    p.add_argument("--out", default=None, help="grid PNG to write (default: RUN/reconstructions.png)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p = sub.add_parser("sample", help="generate images from a trained run; write a grid PNG")
    p.add_argument("run", help="run directory or Hub repo id")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--scheduler", default=None, help="diffusion: ddpm, ddim, dpm++, dpm++_sde, unipc, euler, euler_a, heun "
                   "(flow matching: euler, euler_a, heun, dpm++, dpm++_sde, unipc)")
    p.add_argument("--steps", type=int, default=None, help="diffusion: number of inference steps")
    p.add_argument("--timestep-spacing", default=None, choices=["leading", "trailing", "linspace"])
    p.add_argument("--class-label", default=None, help="class index or name (conditional models); 'all' cycles through the classes")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--x0", default=None, choices=["clip", "dynamic", "none"],
                   help="diffusion: clip each predicted clean image, threshold it dynamically, or neither (default: the run's model.clip_sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="grid PNG to write (default: a new RUN/samples/sample-NNN.png)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)

    p = sub.add_parser("generate", help="generate a labelled synthetic data set (datasets format) from a trained run")
    p.add_argument("run", help="run directory or Hub repo id")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="new folder for the data set")
    p.add_argument("--format", default=None, choices=["save_to_disk", "imagefolder", "parquet"],
                   help="default: save_to_disk (parquet with --push-to-hub)")
    p.add_argument("--class-label", default=None, help="conditional models: one class (index or name); default: every class in turn")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--x0", default=None, choices=["clip", "dynamic", "none"],
                   help="diffusion: clip each predicted clean image, threshold it dynamically, or neither (default: the run's model.clip_sample)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None, help="also upload it as a dataset repo (parquet)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--device", default=None, help=DEVICE_HELP)

    _add_reflow_parser(sub)

    p = sub.add_parser("eval", help="evaluate a trained run (FD/KID/PRDC in genkit's shipped network offline, or Inception FID, DINOv2/CLIP FD, ...)")
    p.add_argument("run", help="run directory or Hub repo id")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--x0", default=None, choices=["clip", "dynamic", "none"],
                   help="diffusion: clip each predicted clean image, threshold it dynamically, or neither (default: the run's model.clip_sample)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: the run's)")
    p.add_argument("--cas", type=int, default=None, metavar="N",
                   help="conditional models: Classification Accuracy Score with N generated images, and the augmentation gain")
    p.add_argument("--cas-real-subset", type=int, default=1000, help="real images of the augmentation comparison")
    p.add_argument("--nll-k", type=int, default=100, help="VAE: importance samples per image for the NLL (Burda et al. use 5000)")
    p.add_argument("--nll-images", default="1000", help="VAE: test images for the NLL, or 'all'")
    p.add_argument("--features", nargs="+", default=["genkit"], metavar="SPACE",
                   help="feature spaces of FD/KID/precision/recall/density/coverage: genkit (its shipped network, offline, default; "
                        "'classifier' is its old name), inception (FID), dinov2, clip")
    p.add_argument("--feature-weights", action="append", default=[], metavar="[SPACE=]PATH",
                   help="Inception weights file, or DINOv2/CLIP model id or folder (default: $GENKIT_<SPACE>_..., the caches, the Hub)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p = sub.add_parser("score", help="score any images (PNG folder, .npz/.npy, datasets folder or Hub id) in genkit's shipped feature network: "
                       "FD, KID, precision/recall/density/coverage, class accuracy")
    p.add_argument("samples", help="a folder of images (class sub-folders 0/, 1/, ... give labels), an .npz/.npy array, or a datasets folder / Hub id")
    p.add_argument("--ref", default="mnist-test", help="mnist-test (default), fashion-mnist-test, mnist-train, fashion-mnist-train, or a folder/file")
    p.add_argument("--num-samples", type=int, default=None, help="score N samples (a seeded shuffle) against N reference images (default: all samples)")
    p.add_argument("--network", default=None, help="genkit-mnist-v1 or genkit-fashion-mnist-v1 (default: the --ref split's; mnist for a folder)")
    p.add_argument("--data-dir", default=None, help="local IDX folder of the --ref data set (default: genkit's search: $GENKIT_DATA_DIR/<name>, ...)")
    p.add_argument("--split", default="train", help="split of a datasets SAMPLES source (default: train)")
    p.add_argument("--no-floors", action="store_true", help="skip the test-vs-test and train-vs-test floors")
    p.add_argument("--out", default=None, help="also write the scores to this JSON file")
    p = sub.add_parser("analyze", help="latent analysis of an encoder: clustering, ICA, SOM, k-NN probe and anomaly scores, association rules")
    p.add_argument("run", help="run directory or Hub repo id")
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="folder for the plots, tables and analysis.json (default: the run directory)")
    p.add_argument("--train-images", type=int, default=10000, help="training images for the k-NN probe and anomaly scores")
    p.add_argument("--knn-k", type=int, default=5, help="neighbours of the k-NN anomaly score (the probe picks its own k)")
    p.add_argument("--code-threshold", type=float, default=None,
                   help="a unit is active above this value (default: 0.5 for RBMs; sparse autoencoders: the quantile of their sparsity target)")
    p.add_argument("--min-support", type=float, default=0.02, help="association rules: minimum support P(units and class)")
    p.add_argument("--min-confidence", type=float, default=0.5, help="association rules: minimum confidence P(class | units)")
    p.add_argument("--max-units", type=int, default=2, help="association rules: at most this many units on the left of a rule")
    p.add_argument("--max-items", type=int, default=40, help="association rules: mine the N units most informative about the class")
    p.add_argument("--top-rules", type=int, default=10, help="association rules printed and kept in analysis.json (all go to the CSV)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p = sub.add_parser("push", help="upload a run to the Hugging Face Hub (weights, configs, grid, model card)")
    p.add_argument("run", help="run directory")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument("--dry-run", metavar="FOLDER", default=None, help="write the exact folder that would be uploaded, upload nothing")
    p.add_argument("--allow-edited-code", action="store_true",
                   help="publish pipeline.py even if it differs from what genkit wrote (it runs wherever the model loads with trust_remote_code)")
    p.add_argument("--allow-hard-links", action="store_true", help="publish files that are hard links to files outside the run")

    p = sub.add_parser("space", help="write (and upload) a deployable Gradio Space that serves genkit models")
    p.add_argument("--repo-id", required=True, help="owner/name of the Space on the Hub")
    p.add_argument("--model", action="append", default=[], metavar="OWNER/MODEL|RUN_DIR",
                   help="Hub model the Space offers, or a local run bundled into the Space under models/ (repeatable)")
    p.add_argument("--gpu", action="store_true", help="for GPU hardware: PyPI's CUDA torch (default: the CPU build, for a CPU Space)")
    p.add_argument("--only-listed", action="store_true", help="serve only the --model ids (visitors cannot enter other Hub ids)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument("--dry-run", metavar="FOLDER", default=None, help="write the exact Space folder, upload nothing")

    p = sub.add_parser("app", help="launch the Gradio app (sample, denoise, latents) on a run")
    p.add_argument("run", nargs="?", default=None, help="run directory or Hub repo id to load at start")
    p.add_argument("--host", default=None,
                   help="address to listen on (default: 127.0.0.1, or $GRADIO_SERVER_NAME); another than loopback, e.g. 0.0.0.0, "
                        "lets other machines in and applies the Space's policy as --share does")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="a public gradio.live link; applies the Space's policy (the run, Hub ids of genkit models, budget)")
    p.add_argument("--share-local-policy", action="store_true",
                   help="with --share or a non-loopback --host: keep local mode (any path or Hub id, no budget) for everyone who reaches the app")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with the device default (cuda when available) filled in for commands that load a model."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "device") and args.device is None:  # resolved here, not in build_parser: finding it imports torch
        from .runs import default_device

        args.device = default_device()
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `genkit` command."""
    args = parse_args(argv)
    try:
        if args.command == "reflow-pairs":
            return _reflow_pairs(args)
        if getattr(args, "device", None):
            from .runs import check_device

            check_device(args.device)
        handler = {"train": _train, "reconstruct": _reconstruct, "sample": _sample, "eval": _eval, "generate": _generate, "score": _score, "analyze": _analyze,
                   "push": _push, "space": _space, "app": _app}[args.command]
        return handler(args)
    except OSError as err:  # a full or read-only disk, a file that vanished: the reason, not a traceback
        print(f"genkit {args.command}: error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C outside the training loop's own handler (loading, decoding): one line, the shell's code
        print(f"genkit {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"genkit {args.command}: error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that carry a message for the user (ConfigError, CheckpointError, DataSourceError, RunDirError are ValueErrors)."""
    engine = sys.modules.get(f"{__package__}.engine")  # not imported: none of its errors can have been raised
    return (ValueError, *((engine.TrainingDiverged,) if engine else ()))


def _train(args: argparse.Namespace) -> int:
    config = TrainConfig.load(args.config).with_overrides(args.overrides)  # config errors come before the heavy imports
    if args.output_dir:
        config.output_dir = args.output_dir
    from .engine import train

    summary = train(config, resume=args.resume, overwrite=args.overwrite, lock=not args.no_lock)
    print(json.dumps(summary, indent=2))
    run = Path(config.output_dir)
    if summary["stop_reason"] == "interrupted":
        print(f"genkit train: interrupted at step {summary['step']}; checkpoint saved. Continue with: genkit train --config "
              f"{run / 'training_config.json'} --resume latest", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    uses = {"autoencoder": ["reconstruct"], "vae": ["reconstruct", "sample"], "rbm": ["reconstruct", "sample"], "classifier": []}
    steps = [f"genkit {use} {run}" for use in [*uses.get(config.family, ["sample"]), "eval"]] + [f"genkit push {run} --repo-id OWNER/NAME"]
    print(f"genkit train: the run is in {run}\nnext: {'  |  '.join(steps)}", file=sys.stderr)  # stdout stays the JSON summary
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    import torch

    from .data import load_split, make_batch
    from .plots import save_grid
    from .progress import stage

    family = _load_run(args)
    model = family.models.get("model")
    if not hasattr(model, "reconstruct"):
        raise ConfigError(f"{args.run} is a {family.config.family} run; reconstruct needs an autoencoder-like model")
    data_cfg = family.config.data
    data = load_split(data_cfg, args.split or data_cfg.eval_split or data_cfg.split).to(args.device)
    total, count = 0.0, 0
    with torch.no_grad(), stage(f"reconstructing {len(data):,} images"):
        for idx in torch.arange(len(data)).split(1000):
            batch = make_batch(data, idx, data_cfg, torch.Generator(args.device).manual_seed(0))
            recon = model.reconstruct(batch["input"]).float()
            total += torch.nn.functional.mse_loss(recon, batch["image"], reduction="sum").item() / recon[0].numel()
            count += len(idx)
    first = make_batch(data, torch.arange(min(8, len(data))), data_cfg, torch.Generator(args.device).manual_seed(0))
    out = Path(args.out or (Path(args.run) / "reconstructions.png" if Path(args.run).is_dir() else "reconstructions.png"))
    save_grid(torch.cat([first["input"], model.reconstruct(first["input"]).float()]), out, nrow=len(first["input"]))
    print(json.dumps({"split": args.split or data_cfg.eval_split, "images": count, "mse": total / count, "grid": str(out)}, indent=2))
    return 0


def _generation_options(args: argparse.Namespace) -> dict:
    if getattr(args, "steps", None) is not None and not 1 <= args.steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    if getattr(args, "guidance_scale", None) is not None and not math.isfinite(args.guidance_scale):
        raise ConfigError(f"--guidance-scale must be a finite number, got {args.guidance_scale}")
    names = ("scheduler", "steps", "guidance_scale", "timestep_spacing", "x0")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _load_run(args: argparse.Namespace):
    """The run's family on --device, reading its data from --data-dir when given."""
    from .runs import load_family

    family = load_family(args.run, args.device)
    if getattr(args, "data_dir", None):
        family.config.data.data_dir = args.data_dir
    return family


def _sample(args: argparse.Namespace) -> int:
    import torch

    from .plots import save_grid
    from .progress import stage

    if not 1 <= args.n <= MAX_GRID_IMAGES:
        raise ConfigError(f"--n must be between 1 and {MAX_GRID_IMAGES} (one grid image); `genkit eval --num-samples` scores larger sets")
    options = _generation_options(args)
    family = _load_run(args)
    labels = family.class_labels(args.class_label, args.n)
    try:
        with stage(f"generating {args.n} images"):
            images = family.generate(args.n, torch.Generator().manual_seed(args.seed), labels, **options)
    except NotImplementedError as err:
        raise ConfigError(f"{err}: use `genkit reconstruct` for autoencoders") from None
    if not torch.isfinite(images).all():  # a NaN grid is a black square that looks like a result
        raise ConfigError("the samples hold NaN or infinite values (an extreme --guidance-scale or a diverged run?); no grid written")
    path = save_grid(images, args.out or _new_sample_path(args.run), nrow=min(10, args.n) if labels is not None else 8)
    print(json.dumps({"images": args.n, "grid": str(path)}))
    return 0


def _new_sample_path(run: str) -> Path:
    """A fresh RUN/samples/sample-NNN.png (./samples/OWNER--NAME/... for a Hub id): earlier grids are never overwritten."""
    folder = Path(run) / "samples" if Path(run).is_dir() else Path("samples") / run.replace("/", "--")
    taken = {p.name for p in folder.glob("sample-*.png")} if folder.is_dir() else set()
    return folder / next(f"sample-{i:03d}.png" for i in range(1, len(taken) + 2) if f"sample-{i:03d}.png" not in taken)


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run, parse_spaces

    spaces, weights = parse_spaces(args.features, args.feature_weights)
    if not 2 <= args.num_samples <= 100_000:
        raise ConfigError(f"--num-samples must be between 2 and 100000 (FD needs at least 2), got {args.num_samples}")
    family = _load_run(args)
    if args.cas is not None and not (10 <= args.cas <= 1_000_000 and 10 <= args.cas_real_subset):
        raise ConfigError("--cas and --cas-real-subset must be at least 10 (and --cas at most 1000000)")
    if not 1 <= args.nll_k <= 100_000:
        raise ConfigError(f"--nll-k must be between 1 and 100000, got {args.nll_k}")
    if args.nll_images != "all" and not (args.nll_images.isdigit() and int(args.nll_images) >= 1):
        raise ConfigError(f"--nll-images must be a positive number or 'all', got {args.nll_images!r}")
    result = evaluate_run(family, num_samples=args.num_samples, device=args.device, seed=args.seed, cas=args.cas,
                          cas_real_subset=args.cas_real_subset, nll_k=args.nll_k,
                          nll_images=None if args.nll_images == "all" else int(args.nll_images), features=spaces, feature_weights=weights,
                          **_generation_options(args))
    if Path(args.run).is_dir():  # kept beside the run: the model card shows it
        (Path(args.run) / "eval_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _score(args: argparse.Namespace) -> int:
    from .evaluation.score import score

    result = score(args.samples, args.ref, args.num_samples, args.network, args.data_dir, args.split, floors=not args.no_floors)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .hub import bare, hub_source
    from .synthetic import export, push_dataset

    fmt = args.format or ("parquet" if args.push_to_hub else "save_to_disk")
    if args.push_to_hub and fmt != "parquet":
        raise ConfigError("--push-to-hub uploads parquet files: use --format parquet (the default with --push-to-hub)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    options = _generation_options(args)
    family = _load_run(args)
    info = export(family, args.out, args.n, fmt, seed=args.seed, batch_size=args.batch_size, class_label=args.class_label,
                  source=bare(args.run), source_model=hub_source(args.run)[0], **options)  # no local path in the card
    report = {"out": args.out, "format": fmt, **{k: v for k, v in info.items() if k != "class_names"}}
    if args.push_to_hub:
        report["pushed"] = push_dataset(args.out, args.push_to_hub, private=args.private)
    print(json.dumps(report, indent=2))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_run, summary
    from .association import format_rules
    from .latents import has_encoder
    from .runs import resolve

    for name in ["num_images", "train_images", "max_units", "max_items", "top_rules", "knn_k"]:
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ["min_support", "min_confidence"]:
        if not 0 < getattr(args, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    family = _load_run(args)
    if not has_encoder(family):
        raise ConfigError(f"{args.run} is a {family.config.family} run: latent analysis needs an encoder (autoencoder, vae, rbm)")
    out = Path(args.out or resolve(args.run))
    report = analyze_run(family, out, args.num_images, args.train_images, args.code_threshold, args.min_support, args.min_confidence,
                         args.max_units, args.max_items, args.top_rules, args.knn_k)
    (out / "analysis.json").write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report, out / "analysis.json"))  # the full report is the file: ~200 lines of JSON help no one at a terminal
    if "association" in report:
        rules = report["association"]
        print(f"\nstrongest rules units -> class ({rules['codes']}; {rules['rules']} rules in {rules['csv']}):")
        print(format_rules(rules["top_rules"]))
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import prepare_upload, push_run

    checks = {"allow_hard_links": args.allow_hard_links, "allow_edited_code": args.allow_edited_code}
    if args.dry_run:
        files = prepare_upload(args.run, args.repo_id, args.dry_run, **checks)
        print(json.dumps({"dry_run": args.dry_run, "repo_id": args.repo_id, "private": args.private, "files": files}, indent=2))
        return 0
    print(push_run(args.run, args.repo_id, private=args.private, token=args.token, **checks))
    return 0


def _space(args: argparse.Namespace) -> int:
    from .hub import prepare_space, push_space

    if args.dry_run:
        files = prepare_space(args.repo_id, args.model, args.dry_run, allow_hub=not args.only_listed, cpu=not args.gpu)
        print(json.dumps({"dry_run": args.dry_run, "repo_id": args.repo_id, "models": args.model, "files": files}, indent=2))
        return 0
    print(push_space(args.repo_id, args.model, allow_hub=not args.only_listed, private=args.private, token=args.token, cpu=not args.gpu))
    return 0


def _app(args: argparse.Namespace) -> int:
    from .extras import require

    require("gradio", "app", "`genkit app`")
    from .space import build_demo  # the app is a package of genkit: an installed wheel has it, no checkout needed

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    policy, initial = None, args.run
    public = args.share or not _loopback(args.host)
    reach = "--share makes the app public" if args.share else f"--host {args.host} lets other machines reach the app"
    if public and not args.share_local_policy:  # a public link gets what a public Space gets
        from .safe_load import SourcePolicy

        policy = SourcePolicy.from_env()  # GENKIT_MODELS and GENKIT_ALLOW_HUB apply too
        if args.run:  # listed under its folder name, so the page does not show the local path
            initial = Path(args.run).name if Path(args.run).is_dir() else args.run
            policy.models[initial] = args.run
        print(f"genkit app: {reach}, so it runs as a Space does: the run given, Hub ids of genkit models, and the "
              "GENKIT_MAX_* budget (--share-local-policy keeps local mode)", file=sys.stderr)
    elif public:
        print(f"genkit app: WARNING: --share-local-policy: {reach}; anyone who reaches it can load any path or Hub id on this machine, "
              "with no budget", file=sys.stderr)
    demo = build_demo(initial, policy)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def _add_reflow_parser(sub: argparse._SubParsersAction) -> None:
    """`genkit reflow-pairs`: (noise, image, label) pairs from a flow run, the data of a 2-rectified flow run."""
    p = sub.add_parser("reflow-pairs", help="draw (noise, image, label) pairs from a flow-matching run for reflow (data.source=the folder)")
    p.add_argument("run", help="flow-matching run directory or Hub repo id")
    p.add_argument("--n", type=int, required=True, help="number of pairs")
    p.add_argument("--out", required=True, help="new folder for the pairs (datasets save_to_disk)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the run's")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)


def _reflow_pairs(args: argparse.Namespace) -> int:
    if args.n < 1 or args.batch_size < 1:
        raise ConfigError("--n and --batch-size must be >= 1")
    _generation_options(args)  # --steps and --guidance-scale: the checks every sampling command makes
    from .reflow import write_pairs

    info = write_pairs(args.run, args.out, args.n, args.seed, args.batch_size, args.steps, args.guidance_scale)
    print(json.dumps(info, indent=2))
    print(f"genkit reflow-pairs: {args.n} pairs in {args.out}\nnext, one-step distillation (training/configs/reflow_distill_mnist.yaml): "
          f"genkit train --config <flow config> --set data.source={args.out} data.data_dir=null init_from={args.run} model.time_sampling=grid "
          "model.guidance_scale=1 model.sample_steps=1 output_dir=<new folder>", file=sys.stderr)
    return 0


def _loopback(host: str | None) -> bool:
    """Whether `host` (None: gradio's default, $GRADIO_SERVER_NAME or 127.0.0.1) is reachable from this machine only."""
    import ipaddress
    import os

    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


if __name__ == "__main__":
    sys.exit(main())
