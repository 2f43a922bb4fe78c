"""The training clock: seconds and CPU seconds of training steps, the budgets they run against, the bar that shows
them, and what to tell the user when a budget ended a run early (a busy machine gives a wall-clock budget fewer steps)."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .config import TrainConfig


class TrainingClock:
    """Training seconds and CPU seconds so far (steps only: evaluation, sampling and checkpoints do not count), agreed
    across processes, against the optional budgets of each (`max_train_seconds`, `max_train_cpu_seconds`)."""

    def __init__(self, accelerator: Accelerator, budget: float | None, cpu_budget: float | None = None):
        self.accelerator, self.budget, self.cpu_budget = accelerator, budget, cpu_budget
        self.seconds = self.cpu_seconds = 0.0

    def resume(self, seconds: float, cpu_seconds: float) -> None:
        """Continue from a checkpoint's clock."""
        self.seconds, self.cpu_seconds = seconds, cpu_seconds

    def update(self, local_seconds: float, local_cpu_seconds: float) -> None:
        """Take this process's training (CPU) seconds; with a budget, every process takes the largest of each."""
        if self.timed and self.accelerator.num_processes > 1:
            both = torch.tensor([local_seconds, local_cpu_seconds], device=self.accelerator.device, dtype=torch.float64)
            local_seconds, local_cpu_seconds = self.accelerator.reduce(both, reduction="max").tolist()
        self.seconds, self.cpu_seconds = local_seconds, local_cpu_seconds

    @property
    def timed(self) -> bool:
        """Whether a budget of either kind is set."""
        return self.budget is not None or self.cpu_budget is not None

    @property
    def progress(self) -> float:
        """The fraction of the budget spent (the larger of the two), in [0, 1] (0 without a budget)."""
        fractions = [spent / budget for spent, budget in ((self.seconds, self.budget), (self.cpu_seconds, self.cpu_budget)) if budget]
        return min(1.0, max(fractions, default=0.0))

    @property
    def exhausted(self) -> bool:
        """Whether a budget is spent."""
        return self.timed and self.progress >= 1.0

    def spent(self) -> str:
        """Which budget ended the run, in words (for the stop reason)."""
        if self.budget is not None and self.seconds >= self.budget:
            return f"time budget spent: {self.seconds:.0f} s of training (max_train_seconds {self.budget:g})"
        return f"CPU budget spent: {self.cpu_seconds:.0f} CPU seconds of training (max_train_cpu_seconds {self.cpu_budget:g})"


def training_bar(config: TrainConfig, clock: TrainingClock, max_steps: int, step: int, show: bool) -> tqdm:
    """The training bar: steps out of max_steps, or, for a run with a budget, seconds out of it (its clock ends it first)."""
    if not clock.timed:
        return tqdm(total=max_steps, initial=step, disable=not show, desc=config.family)
    wall = clock.budget is not None
    budget, spent = (clock.budget, clock.seconds) if wall else (clock.cpu_budget, clock.cpu_seconds)
    return tqdm(total=budget, initial=min(spent, budget), disable=not show, desc=f"{config.family} ({'' if wall else 'CPU '}s of budget)",
                unit="s", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")


def advance(bar: tqdm, clock: TrainingClock, step: int) -> None:
    """One step on the training bar (the seconds spent of the budget, for a run that has one)."""
    if not clock.timed:
        bar.update(1)
        return
    spent = clock.seconds if clock.budget is not None else clock.cpu_seconds
    bar.update(min(spent, bar.total) - bar.n)


def budget_report(config: TrainConfig, clock: TrainingClock, step: int, max_steps: int, device: torch.device) -> dict[str, Any]:
    """Where a budget left the run: steps reached, the share of the CPU it got, the load, and how to train by steps instead."""
    threads = torch.get_num_threads()
    share = clock.cpu_seconds / max(clock.seconds * threads, 1e-9)  # 1: every thread of the process ran all along
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {"steps": step, "steps_of_epochs": max_steps, "cpu_share": round(share, 3), "threads": threads,
              "load_average": None if load is None else round(load, 2), "cpus": os.cpu_count()}
    text = f"{clock.spent()}: stopped at step {step:,} of the {max_steps:,} that max_steps / epochs ask for"
    busy = device.type == "cpu" and clock.budget is not None and clock.seconds >= clock.budget and share < 0.5
    if busy:  # a loaded machine: the same wall-clock budget buys a fraction of the steps an idle one gives
        idle = int(round(step / max(share, 1e-3), -1))
        report["steps_if_idle"] = idle
        text += (f". The machine was busy (load average {load:.1f} on {os.cpu_count()} CPUs): this process got {share:.0%} of its {threads} "
                 f"threads' time, so an idle machine would reach about {idle:,} steps in the same {clock.budget:g} s")
        suggestion = idle
    else:
        suggestion = step
        if load is not None:
            text += f" (load average {load:.1f} on {os.cpu_count()} CPUs)"
    text += (f". To train a fixed amount whatever the load: --set max_train_seconds=null max_steps={max(suggestion, 1)} "
             f"(or max_train_cpu_seconds={(clock.budget or clock.cpu_budget) * (threads if clock.budget else 1):g}, a budget of CPU time)")
    report["message"] = text
    return report
