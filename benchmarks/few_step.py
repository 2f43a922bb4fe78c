"""Few-step sampling: epsilon, v and flow-matching models trained with the same UNet and the same steps (so the same CPU
seconds), scored against the number of network evaluations (NFE) with deterministic samplers, and against DDPM-1000.

Called by `diffusion_quality.py --few-step`; see its docstring for the command line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from genkit.config import TrainConfig
from genkit.engine import train
from genkit.evaluation import class_accuracy, get_classifier, prdc, real_pair, training_images
from genkit.evaluation.distances import fd_kid
from genkit.evaluation.features import feature_space
from genkit.families.diffusion import DDPM_ONLY
from genkit.runs import load_family

# each objective's model options; the rest (UNet, batch, lr, steps, EMA, guidance) comes from the shared config
OBJECTIVES = {
    "epsilon": {"objective": "ddpm", "prediction_type": "epsilon", "beta_schedule": "linear", "snr_gamma": 5.0},
    "epsilon_no_snr": {"objective": "ddpm", "prediction_type": "epsilon", "beta_schedule": "linear"},  # no min-SNR weighting
    "v": {"objective": "ddpm", "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2", "snr_gamma": 5.0},
    "flow": {"objective": "flow_matching", "time_sampling": "logit_normal"},
    "flow_uniform": {"objective": "flow_matching", "time_sampling": "uniform"},
}
# deterministic samplers per kind of model; heun spends 2 evaluations per step but the first
SAMPLERS = {"ddpm": ["ddim", "dpm++", "unipc"], "flow_matching": ["euler", "heun", "dpm++", "unipc"]}


@dataclass
class Trained:
    objective: str
    seed: int
    run: Path
    cpu_seconds: float
    steps: int


def steps_for(sampler: str, nfe: int) -> int | None:
    """Sampler steps that spend at most `nfe` network evaluations (Heun: 2 steps - 1), or None when it cannot."""
    if sampler == "heun":
        return (nfe + 1) // 2 if nfe >= 3 else None
    return nfe


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations per image (a guided evaluation counts once: both halves run in one batch)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def train_models(config_path: str, overrides: list[str], objectives: list[str], seeds: list[int], work: Path, data_dir: str | None,
                 threads: int) -> list[Trained]:
    """Train (or reuse, when already finished in `work`) one run per objective and seed; CPU seconds by process_time."""
    done = []
    for objective in objectives:
        for seed in seeds:
            run = work / f"{objective}-seed{seed}"
            record = run / "few_step_cpu.json"
            if not record.is_file():
                config = TrainConfig.load(config_path).with_overrides(overrides)
                config.model = {k: v for k, v in config.model.items() if k not in DDPM_ONLY and k not in ("objective", "time_sampling")}
                config.model.update(OBJECTIVES[objective])
                config.seed, config.output_dir, config.log_with, config.progress_bar = seed, str(run), "none", False
                config.max_train_seconds = None  # equal steps, not equal wall time: the same work for every objective
                if data_dir:
                    config.data.data_dir = data_dir
                torch.set_num_threads(threads)
                started = time.process_time()
                summary = train(config, overwrite=True)
                record.write_text(json.dumps({"cpu_seconds": time.process_time() - started, "steps": summary["step"]}))
            info = json.loads(record.read_text())
            done.append(Trained(objective, seed, run, info["cpu_seconds"], info["steps"]))
            print(f"trained {objective} seed {seed}: {info['steps']} steps, {info['cpu_seconds']:.0f} CPU s", flush=True)
    return done


def few_step_table(models: list[Trained], nfes: list[int], ddpm_steps: int, num_samples: int, guidance: float | None, device: str,
                   threads: int, samplers: list[str] | None = None) -> None:
    """Print one row per (objective, sampler, NFE): FD, precision, recall, class accuracy, each the mean of the seeds."""
    torch.set_num_threads(threads)
    families = {(m.objective, m.seed): load_family(str(m.run), device) for m in models}
    data = next(iter(families.values())).config.data
    classifier = get_classifier(data, device)
    space = feature_space("genkit", data, device)  # the shipped network (machine-local classifier for other data)
    real, other = real_pair(data, num_samples)
    real_features = space.extract(real)
    floor = fd_kid(real_features, space.extract(other))["fd"]
    train_floor = fd_kid(real_features, space.extract(training_images(data, num_samples)))["fd"]
    print(f"\n{num_samples} samples per score, genkit-mnist-v1 features; FD floors: training images {train_floor:.1f}, test vs test {floor:.1f}")
    print("CPU seconds of training: " + ", ".join(f"{m.objective}/{m.seed} {m.cpu_seconds:.0f} ({m.steps} steps)" for m in models) + "\n")
    print("| objective | sampler | NFE | FD (per seed) | FD mean | precision | recall | class acc | s / 1k images |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for objective in dict.fromkeys(m.objective for m in models):
        seeds = [m.seed for m in models if m.objective == objective]
        kind = OBJECTIVES[objective]["objective"]
        plan = [(s, steps_for(s, n)) for s in SAMPLERS[kind] if samplers is None or s in samplers for n in nfes]
        plan += [("ddpm", ddpm_steps)] if kind == "ddpm" and ddpm_steps else []
        for sampler, steps in plan:
            if steps is None:
                continue
            scores = []
            for seed in seeds:
                family = families[(objective, seed)]
                labels = torch.arange(num_samples) % family.info.num_classes if family.conditional else None
                generator = torch.Generator().manual_seed(1234)
                started = time.perf_counter()
                fake = torch.cat([family.generate(len(c), generator, None if labels is None else labels[c], scheduler=sampler, steps=steps,
                                                  guidance_scale=guidance).cpu() for c in torch.arange(num_samples).split(250)])
                seconds = time.perf_counter() - started
                features = space.extract(fake)
                score = {"fd": fd_kid(real_features, features)["fd"], **prdc(real_features, features), "seconds": seconds}
                score["acc"] = class_accuracy(fake, labels, classifier) if labels is not None else float("nan")
                scores.append(score)
            mean = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
            rows.append((objective, sampler, nfe_of(sampler, steps), mean))
            per_seed = " / ".join(f"{s['fd']:.1f}" for s in scores)
            print(f"| {objective} | {sampler} | {nfe_of(sampler, steps)} | {per_seed} | {mean['fd']:.1f} | "
                  f"{mean['precision']:.3f} | {mean['recall']:.3f} | {mean['acc']:.3f} | {1000 * mean['seconds'] / num_samples:.1f} |", flush=True)
    pivot(rows, nfes)


def pivot(rows: list, nfes: list[int]) -> None:
    """Mean FD per (objective, sampler) against NFE, the best of each objective marked."""
    print("\nmean FD against NFE (deterministic samplers; DDPM-1000 is ancestral)\n")
    columns = sorted({r[2] for r in rows})
    print("| objective / sampler | " + " | ".join(str(c) for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key in dict.fromkeys((r[0], r[1]) for r in rows):
        cells = {r[2]: r[3]["fd"] for r in rows if (r[0], r[1]) == key}
        print(f"| {key[0]} / {key[1]} | " + " | ".join(f"{cells[c]:.1f}" if c in cells else "" for c in columns) + " |")
