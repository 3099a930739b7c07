"""Optimizer and learning-rate schedule: the last stop of the pipeline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    optimizer: Literal["adam", "adamw"] = "adam"
    """Optimizer (the paper used Distributed Shampoo, not in PyTorch; see docs)."""
    lr: float = 1e-2
    """Peak learning rate of the field."""
    background_lr: float = 1e-3
    """Learning rate of the environment-map MLP."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon (small: hash-grid features see sparse gradients)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (adamw)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to the peak learning rate."""
    final_lr: float = 1e-6
    """Learning rate at the last step (cosine)."""
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm at this value (0: off)."""


def build_optimizer(field: nn.Module, background: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam(W) over the field and (if it has parameters) the background, each with its own lr."""
    groups = [{"params": list(field.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
    bg_params = list(background.parameters())
    if bg_params:
        groups.append({"params": bg_params, "lr": cfg.background_lr, "base_lr": cfg.background_lr})
    kwargs = dict(betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    # On CUDA the fused kernel updates every tensor in a launch or two, faster than the default
    # (foreach) implementation's many launches.
    if all(p.is_cuda for group in groups for p in group["params"]):
        kwargs["fused"] = True
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, **kwargs)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}' (use adam or adamw)")


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of each group's base lr at `step`: linear warm-up, then constant or cosine decay
    to `final_lr / lr` at the last step. A pure function of the step, so resuming needs no state."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.final_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
