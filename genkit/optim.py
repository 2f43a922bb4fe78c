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
from diffusers.optimization import get_scheduler
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .clock import TrainingClock
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
