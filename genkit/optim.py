"""Optimizers and learning-rate schedules: over optimizer steps, or over a training budget (`max_train_seconds` of wall
time, or `max_train_cpu_seconds` of the process's CPU time, which a busy machine does not eat).

A time-budgeted run does not know its step count in advance, so its schedule runs on the training clock: after the
warm-up steps, the cosine or linear decay follows the fraction of the budget spent. In several processes the clock is
the slowest process's, shared every step, so every replica uses the same learning rate and stops at the same step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import ConfigError, TrainConfig


def make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The config's optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (check trainable_layers)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.betas[0], weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    fused = config.fused_optimizer if config.fused_optimizer is not None else device.type == "cuda"
    return cls(params, lr=config.learning_rate, betas=tuple(config.betas), weight_decay=config.weight_decay, fused=fused or None)


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


def make_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, max_steps: int, clock: TrainingClock) -> LambdaLR:
    """The config's schedule over `max_steps`, or, with a time or CPU budget, over the training clock after the warm-up."""
    if not clock.timed:
        return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=max_steps)
    kind, warmup = config.lr_scheduler, config.warmup_steps

    def factor(step: int) -> float:
        if kind != "constant" and step < warmup:
            return step / max(1, warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * clock.progress))
        if kind == "linear":
            return 1 - clock.progress
        return 1.0

    return LambdaLR(optimizer, factor)


def apply_optimizer_settings(config: TrainConfig, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any]) -> None:
    """After a resume, the config's learning rate, weight decay and betas replace the ones saved with the optimizer."""
    for part, optimizer in optimizers.items():
        scheduler = schedulers[part]
        scheduler.base_lrs = [config.learning_rate for _ in scheduler.base_lrs]
        factors = [f(scheduler.last_epoch) for f in scheduler.lr_lambdas]  # every schedule here is a LambdaLR
        for group, factor in zip(optimizer.param_groups, factors):
            group["initial_lr"], group["lr"] = config.learning_rate, config.learning_rate * factor
            group["weight_decay"] = config.weight_decay
            if "betas" in group:  # Adam / AdamW
                group["betas"] = tuple(config.betas)
            else:  # SGD takes its momentum from betas[0]
                group["momentum"] = config.betas[0]
