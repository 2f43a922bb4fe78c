"""One- and few-step generation on conditional MNIST: flow matching (today), reflow (2-rectified flow), MeanFlow from
scratch, MeanFlow fine-tuned from the flow run, MeanFlow on the reflow pairs and reflow distilled at the 1- and 2-step
sampler's times (`model.time_sampling: grid`), at 1, 2 and 4 network evaluations (and flow's default 8).

    python benchmarks/one_step.py --work runs/one_step --data-dir ../shared/data/mnist --train   # train, then score
    python benchmarks/one_step.py --work runs/one_step --data-dir ../shared/data/mnist           # score finished runs

Training budgets are CPU seconds (process time, `--threads` threads; `max_train_cpu_seconds`), so every row costs the
same total: flow runs `--budget` seconds; MeanFlow from scratch too; the other rows start from a flow run of `--base`
seconds and spend the rest (the reflow rows: drawing 1,000 pairs, then training on them; reflow_distill's pairs are drawn
with guidance `--distill-guidance`, as its config says, the other reflow rows' with the start run's own). `--source`,
`--preset` and `--seed` change the data set, the UNet and the training seed of every row. Each cell is FD / class
accuracy / pure-noise tiles (MNIST only) of `--n` samples (classes in turn, seed 1234) in genkit's shipped feature space
for the data set (`genkit eval`'s offline space) against `--n` images of the reference split; the FD floor (reference vs
other real images) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from student_budget import NOISE_SHARE, mid_grey_share  # noqa: E402

from genkit.config import TrainConfig  # noqa: E402
from genkit.engine import train  # noqa: E402
from genkit.evaluation import class_accuracy, get_classifier, real_pair  # noqa: E402
from genkit.evaluation.distances import fd_kid  # noqa: E402
from genkit.evaluation.features import feature_space  # noqa: E402
from genkit.reflow import is_pairs_folder, write_pairs  # noqa: E402
from genkit.runs import load_family  # noqa: E402

FLOW_CONFIG = REPO / "training" / "configs" / "diffusion_mnist_5min.yaml"
MF_CONFIG = REPO / "training" / "configs" / "meanflow_mnist_5min.yaml"
DISTILL_CONFIG = REPO / "training" / "configs" / "reflow_distill_mnist.yaml"
ROWS = ("flow", "reflow", "meanflow_scratch", "meanflow_from_flow", "reflow_meanflow", "reflow_distill")
# other rows are any run folder in --work: meanflow_from_flow* start from flow_base (its seconds count), a run on a pairs
# folder from flow_base and those pairs; flow_base itself is the start run


def cpu_of(run: Path) -> float:
    """Training CPU seconds a finished run recorded (metrics.json)."""
    return json.loads((run / "metrics.json").read_text())["final"]["train_cpu_seconds"]


def run_training(config: Path, run: Path, cpu: float, sets: list[str]) -> None:
    """Train one run to a CPU budget unless it has finished already."""
    if (run / "metrics.json").is_file():
        return
    base = ["max_train_seconds=null", "log_with=none", "progress_bar=false", f"max_train_cpu_seconds={cpu:g}", f"output_dir={run}"]
    train(TrainConfig.load(str(config)).with_overrides(base + sets), overwrite=True)


def pairs_record(pairs: Path) -> Path:
    """Where the CPU seconds of drawing a pairs folder are kept: `<folder>_cpu.json` beside it."""
    return pairs.with_name(f"{pairs.name}_cpu.json")


def draw_pairs(work: Path, folder: str, n: int, guidance: float | None) -> float:
    """CPU seconds of drawing `n` pairs from flow_base into `work/folder` at `guidance` (None: its own); drawn once."""
    record = pairs_record(work / folder)
    if not record.is_file():
        started = time.process_time()
        write_pairs(str(work / "flow_base"), work / folder, n, guidance_scale=guidance, progress=False)
        record.write_text(json.dumps({"cpu_seconds": time.process_time() - started}))
    return json.loads(record.read_text())["cpu_seconds"]


def train_all(work: Path, budget: float, base: float, data: list[str], pairs: int, rows: list[str], distill_guidance: float) -> None:
    """The runs of `rows` (and the start run and pairs they share), each to its share of the budget."""
    if "flow" in rows:
        run_training(FLOW_CONFIG, work / "flow", budget, data)
    if "meanflow_scratch" in rows:
        run_training(MF_CONFIG, work / "meanflow_scratch", budget, [*data, "init_from=null", "learning_rate=1e-3", "warmup_steps=100", "ema_decay=0.999"])
    if not {"meanflow_from_flow", "reflow", "reflow_distill", "reflow_meanflow"} & set(rows):
        return
    run_training(FLOW_CONFIG, work / "flow_base", base, data)
    if "meanflow_from_flow" in rows:
        run_training(MF_CONFIG, work / "meanflow_from_flow", budget - base, [*data, f"init_from={work / 'flow_base'}"])
    kept = [s for s in data if not s.startswith("data.")]  # the pairs rows keep every setting of their start run but its data

    def on_pairs(folder: str) -> list[str]:
        return [f"data.source={work / folder}", "data.data_dir=null", f"init_from={work / 'flow_base'}", *kept]

    if {"reflow", "reflow_meanflow"} & set(rows):  # pairs at the start run's own guidance
        left = budget - base - draw_pairs(work, "pairs", pairs, None)
        if "reflow" in rows:
            run_training(FLOW_CONFIG, work / "reflow", left, [*on_pairs("pairs"), "model.guidance_scale=1.0", "model.sample_steps=1",
                                                              "learning_rate=5e-4", "warmup_steps=20", "ema_decay=0.99"])
        if "reflow_meanflow" in rows:  # each image's own noise (a straighter path) under the average-velocity objective
            run_training(MF_CONFIG, work / "reflow_meanflow", left, on_pairs("pairs"))
    if "reflow_distill" in rows:  # Liu et al.'s last stage: trained only where the 1- and 2-step Euler samplers evaluate
        folder = f"pairs_g{distill_guidance:g}"
        run_training(DISTILL_CONFIG, work / "reflow_distill", budget - base - draw_pairs(work, folder, pairs, distill_guidance), on_pairs(folder))


def row_cpu(work: Path, rows: list[str]) -> dict[str, float]:
    """Total training CPU seconds of each finished row: its own, plus the start run's (meanflow_from_flow*) or the start
    run's and its pairs' (a row trained on a pairs folder)."""
    base = cpu_of(work / "flow_base") if (work / "flow_base" / "metrics.json").is_file() else float("nan")
    total = {}
    for row in rows:
        if not (work / row / "metrics.json").is_file():
            continue
        source = TrainConfig.load(str(work / row / "training_config.json")).data.source
        if is_pairs_folder(source):
            record = pairs_record(Path(str(source)))
            shared = base + (json.loads(record.read_text())["cpu_seconds"] if record.is_file() else float("nan"))
        else:
            shared = base if row.startswith("meanflow_from_flow") else 0
        total[row] = cpu_of(work / row) + shared
    return total


def score(work: Path, cpu: dict[str, float], n: int, nfes: list[int], rows: list[str]) -> None:
    """Print the table: FD / class accuracy per row and NFE, training CPU seconds, sampling CPU seconds per 1,000 images.
    Each row's scores are kept in `work/scores-<row>-<n>.json`, so rows can be scored as their runs finish."""
    families = {row: load_family(str(work / row), "cpu") for row in rows if (work / row / "model_index.json").is_file()}
    # the reference is MNIST, never a pairs folder: a row's own data, or the start run's when only reflow rows are scored
    configs = [f.config for f in families.values()] + [TrainConfig.load(str(run / "training_config.json")) for run in [work / "flow_base", work / "flow"]
                                                       if (run / "training_config.json").is_file()]
    data = next((c.data for c in configs if not is_pairs_folder(c.data.source)), None)
    if data is None:
        raise SystemExit(f"no finished run of {rows} (nor flow_base / flow) in {work}: train them first (--train)")
    data.data_dir = data.data_dir if data.data_dir and Path(data.data_dir).is_dir() else None
    tiles = data.source == "mnist"  # mid-grey tiles are pure noise on MNIST's black background; Fashion-MNIST's cloth is mid-grey
    classifier = get_classifier(data, "cpu")
    space = feature_space("genkit", data)  # the shipped genkit-mnist-v1
    real, other = real_pair(data, n)
    real_features = space.extract(real)
    floor = fd_kid(real_features, space.extract(other))["fd"]
    labels = torch.arange(n) % 10
    cells: dict[tuple[str, int], str] = {}
    speed: dict[tuple[str, int], float] = {}
    fds: dict[tuple[str, int], float] = {}
    loads = []
    for row, family in families.items():
        record = work / f"scores-{row}-{n}.json"
        done = json.loads(record.read_text()) if record.is_file() else {}
        for nfe in [*nfes, *([8] if row.startswith("flow") else [])]:
            if str(nfe) not in done:
                generator = torch.Generator().manual_seed(1234)
                started = time.process_time()
                fake = torch.cat([family.generate(len(c), generator, labels[c], steps=nfe) for c in torch.arange(n).split(250)])
                seconds = 1000 * (time.process_time() - started) / n
                done[str(nfe)] = {"fd": fd_kid(real_features, space.extract(fake))["fd"], "acc": class_accuracy(fake, labels, classifier),
                                  "noise": int((mid_grey_share(fake) > NOISE_SHARE).sum()), "cpu_per_1k": seconds, "load": os.getloadavg()[0]}
                record.write_text(json.dumps(done, indent=1))
            got = done[str(nfe)]
            noise = f" / {got['noise']}" if "noise" in got and tiles else ""
            cells[(row, nfe)], speed[(row, nfe)] = f"{got['fd']:.1f} / {got['acc']:.3f}{noise}", got["cpu_per_1k"]
            fds[(row, nfe)] = got["fd"]
            loads.append(got["load"])
            print(f"{row} NFE {nfe}: {cells[(row, nfe)]}, {speed[(row, nfe)]:.1f} CPU s / 1k images", flush=True)
    load = max(loads)
    seeds = ", ".join(str(s) for s in sorted({f.config.seed for f in families.values()}))
    presets = ", ".join(sorted({str(f.option("preset")) for f in families.values()}))
    print(f"\nprotocol: conditional {data.source}, `{presets}` UNet, training seed {seeds}, {torch.get_num_threads()} thread(s), "
          f"load average up to {load:.1f} on "
          f"{os.cpu_count()} CPUs; {n} samples per cell (classes in turn, sampling seed 1234) against {n} images of the "
          f"reference split, FD in {getattr(space, 'network', 'genkit')}'s feature space (floor: real vs real {floor:.1f}); guidance: flow 1.5 "
          f"(CFG, both halves in one batch), reflow 1.0, MeanFlow trained in (omega 1.5), 1 evaluation per step. Each cell: "
          f"FD / class accuracy" + (f" / pure-noise tiles (share of mid-grey pixels over {NOISE_SHARE})" if tiles else "") + "\n")
    columns = [*nfes, 8]
    print(f"| row | training CPU s | {' | '.join(f'NFE {k}' for k in columns)} | CPU s / 1k images at NFE 1 |")
    print("|---" * (len(columns) + 3) + "|")
    for row in families:
        cols = " | ".join(cells.get((row, k), "") for k in columns)
        print(f"| {row} | {cpu.get(row, float('nan')):.0f} | {cols} | {speed[(row, 1)]:.1f} |")
    if ("flow", 8) in speed:
        print(f"\nflow at its default 8 steps: {speed[('flow', 8)]:.1f} CPU s / 1k images; "
              + ", ".join(f"{row} at 1 NFE is {speed[('flow', 8)] / speed[(row, 1)]:.1f}x faster" for row in families if row != "flow"))
        print("FD over flow's at 8 NFE, at 1 / 2 NFE (goals: 1.25x / 1.1x): " + ", ".join(
            f"{row} {fds[(row, 1)] / fds[('flow', 8)]:.1f}x / {fds[(row, 2)] / fds[('flow', 8)]:.1f}x"
            for row in families if (row, 1) in fds and (row, 2) in fds))


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="folder of the runs (finished ones are reused)")
    parser.add_argument("--train", action="store_true", help="train the missing runs first")
    parser.add_argument("--budget", type=float, default=600, help="training CPU seconds per row")
    parser.add_argument("--base", type=float, default=300, help="CPU seconds of the flow run that reflow and MeanFlow-from-flow start from")
    parser.add_argument("--pairs", type=int, default=1000, help="reflow pairs drawn from the base flow run")
    parser.add_argument("--distill-guidance", type=float, default=3.5,
                        help="guidance of the pairs reflow_distill trains on (reflow and reflow_meanflow: the start run's own)")
    parser.add_argument("--n", type=int, default=1000, help="samples per cell")
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--source", default="mnist", help="data set of every row: mnist, fashion_mnist (Fashion-MNIST), ...")
    parser.add_argument("--data-dir", default=None, help="folder of the data set's IDX files (offline)")
    parser.add_argument("--preset", default="tiny", help="UNet preset of every row (tiny, small, ...)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run (sampling always uses seed 1234)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="rows to train (--train) and score: any of the above, or a finished run folder in --work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = [f"data.source={args.source}", f"model.preset={args.preset}", f"seed={args.seed}"] + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    if args.train:
        train_all(work, args.budget, args.base, data, args.pairs, args.rows, args.distill_guidance)
    score(work, row_cpu(work, args.rows), args.n, args.nfe, args.rows)


if __name__ == "__main__":
    main()
