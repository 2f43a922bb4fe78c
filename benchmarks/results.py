"""The results table anyone can rerun: the shipped configs trained at stated budgets, scored in genkit's shipped networks.

    python benchmarks/results.py --mnist-dir ../shared/data/mnist            # the full table (see FULL below for its cost)
    python benchmarks/results.py --quick --mnist-dir ../shared/data/mnist    # a smoke test of the same pipeline, minutes

Every generative family's shipped config is trained on MNIST and on Fashion-MNIST (`data.source=fashion_mnist`) for a
stated budget of training CPU seconds (`max_train_cpu_seconds`; the config's epochs when they end first), on one thread,
then `genkit eval` scores N samples in the data set's shipped network (`genkit-mnist-v1`, `genkit-fashion-mnist-v1`)
and `genkit sample` writes a grid. The table in docs/results.md (between the markers below; the rest of the page is
kept) carries the protocol beside every figure: N, reference split, feature network, sampler and NFE, guidance, seed,
training CPU seconds. Resumable: a finished run (metrics.json) is not trained again, a run with eval_results.json of
the same N is not scored again, so an interrupted call continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- benchmarks/results.py: begin -->", "<!-- benchmarks/results.py: end -->"
CONFIGS = ["vae_mnist", "vae_binarized_mnist", "gan_mlp_mnist", "dcgan_mnist", "cgan_mnist", "rbm_mnist", "diffusion_mnist_5min",
           "diffusion_mnist_conditional"]
DATASETS = ["mnist", "fashion_mnist"]
FULL = {"configs": CONFIGS, "datasets": DATASETS, "budget": 600, "num_samples": 1000}  # 16 runs x 600 CPU s + scoring: ~3 CPU hours
QUICK = {"configs": ["vae_mnist", "dcgan_mnist"], "datasets": DATASETS, "budget": 15, "num_samples": 200}


def genkit(*args: str) -> subprocess.CompletedProcess:
    """Run the genkit CLI of this checkout (one thread), failing loudly."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "genkit.cli", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"genkit {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def run_one(config: str, dataset: str, plan: dict, args: argparse.Namespace, work: Path, grids: Path) -> dict:
    """Train (unless finished), score (unless scored at this N) and draw one run; its row."""
    name = f"{config.removesuffix('_mnist').replace('_mnist_', '_')}-{dataset}"
    run = work / name
    data_dir = args.mnist_dir if dataset == "mnist" else args.fashion_dir
    if not (run / "metrics.json").is_file():
        sets = [f"max_train_cpu_seconds={plan['budget']}", "max_train_seconds=null", f"output_dir={run}", "log_with=none", "progress_bar=false",
                "eval_generation_every=null", "save_best=null", "export_best=false", "early_stopping_patience=null", f"data.source={dataset}",
                f"data.data_dir={data_dir}" if data_dir else "data.data_dir=null", "seed=0"]
        started = time.perf_counter()
        print(f"training {name} ({plan['budget']} CPU s budget) ...", flush=True)
        genkit("train", "--config", str(REPO / "training" / "configs" / f"{config}.yaml"), "--overwrite", "--set", *sets)
        print(f"  trained in {time.perf_counter() - started:.0f} s wall", flush=True)
    scores_file = run / "eval_results.json"
    scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    if scores.get("num_samples") != plan["num_samples"] or "fd" not in scores:
        print(f"scoring {name} ({plan['num_samples']} samples) ...", flush=True)
        genkit("eval", str(run), "--num-samples", str(plan["num_samples"]), "--seed", "0", "--device", "cpu", "--nll-images", "100", "--nll-k", "10")
        scores = json.loads(scores_file.read_text())
    grid = grids / f"{name}.png"
    if not grid.is_file():
        conditional = config.startswith("cgan") or config.endswith("_conditional")  # two images of every class
        genkit("sample", str(run), "--n", "20" if conditional else "16", *(["--class-label", "all"] if conditional else []), "--out", str(grid),
               "--device", "cpu")
    final = json.loads((run / "metrics.json").read_text())["final"]
    return {"name": name, "config": config, "dataset": dataset, "budget": plan["budget"], "steps": final["step"],
            "train_cpu_seconds": final["train_cpu_seconds"], "grid": grid, **scores}


def fmt(value, digits: int = 3) -> str:
    """A table cell: numbers to `digits` significant figures, missing values blank."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(rows: list[dict], plan: dict, quick: bool, out: Path) -> str:
    """The markdown section: how it was made, then one row per run with its protocol columns."""
    head = ("| run | data set | config | budget (CPU s) | steps | train CPU s | N | reference | feature network | sampler | NFE | guidance | seed "
            "| FD | FD test floor | FD train floor | KID | precision | recall | density | coverage | class acc | grid |")
    lines = [BEGIN, "", "## Every family, MNIST and Fashion-MNIST", "",
             f"Made by `python benchmarks/results.py{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d')}: each shipped config trained "
             f"for at most {plan['budget']} CPU seconds on one thread (the config's epochs when sooner), scored on {plan['num_samples']:,} samples "
             "against as many test images drawn by a seeded shuffle, in the data set's shipped feature network. FD is the Fréchet "
             "distance in that network's 64-d features (`FD_genkit-mnist-v1`, not Inception's FID); KID unbiased (cubic kernel); "
             "the floors are other test images and as many training images against the same reference.", ""]
    if quick:
        lines += ["These are smoke-test budgets that prove the pipeline, not figures to compare models by; the full run "
                  "(`python benchmarks/results.py`, 600 CPU s per run, N = 1,000) takes about 3 CPU hours.", ""]
    lines += [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for row in rows:
        grid = os.path.relpath(row["grid"], out.parent)
        cells = [row["name"], row["dataset"], f"`{row['config']}`", row["budget"], row["steps"], fmt(row["train_cpu_seconds"], 4), row.get("num_samples"),
                 row.get("reference_split"), row.get("feature_network"), row.get("sampler"), row.get("nfe"), fmt(row.get("guidance")), row.get("seed"),
                 fmt(row.get("fd")), fmt(row.get("fd_test_floor")), fmt(row.get("fd_train_floor")), fmt(row.get("kid")), fmt(row.get("precision")),
                 fmt(row.get("recall")), fmt(row.get("density")), fmt(row.get("coverage")), fmt(row.get("class_accuracy")), f"[grid]({grid})"]
        lines.append("| " + " | ".join(str(c) if c is not None else "" for c in cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def write(section: str, out: Path) -> None:
    """Put the section between the markers of `out` (appended when absent); the rest of the page stays."""
    page = out.read_text() if out.is_file() else "# Results\n"
    if BEGIN in page and END in page:
        page = page[: page.index(BEGIN)] + section + page[page.index(END) + len(END):]
    else:
        page = page.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(page)


def main() -> None:
    """Train, score and tabulate every (config, data set) of the plan; resumable."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK['configs']} x {QUICK['datasets']}, {QUICK['budget']} CPU s, "
                        f"N = {QUICK['num_samples']}")
    parser.add_argument("--mnist-dir", default=None, help="local MNIST IDX folder (default: genkit's search)")
    parser.add_argument("--fashion-dir", default=None, help="local Fashion-MNIST IDX folder (default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--work", default=None, help="folder of the runs (default: runs/results[-quick])")
    parser.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--configs", nargs="+", default=None, help="only these configs")
    parser.add_argument("--budget", type=float, default=None, help="training CPU seconds per run (default: the plan's)")
    parser.add_argument("--num-samples", type=int, default=None)
    args = parser.parse_args()
    plan = dict(QUICK if args.quick else FULL)
    plan.update({k: v for k, v in {"configs": args.configs, "budget": args.budget, "num_samples": args.num_samples}.items() if v})
    work = Path(args.work or REPO / "runs" / ("results-quick" if args.quick else "results"))
    out = Path(args.out)
    grids = out.parent / "results" / ("quick" if args.quick else "full")
    grids.mkdir(parents=True, exist_ok=True)
    started, cpu = time.perf_counter(), time.process_time()
    rows = [run_one(config, dataset, plan, args, work, grids) for dataset in plan["datasets"] for config in plan["configs"]]
    write(table(rows, plan, args.quick, out), out)
    children = os.times()
    print(f"wrote {out} ({len(rows)} runs) in {time.perf_counter() - started:.0f} s wall, "
          f"{time.process_time() - cpu + children.children_user + children.children_system:.0f} CPU s (this call, children included)")


if __name__ == "__main__":
    main()
