"""Geometry regularizers (paper appendix A.2) and the linear ramp of their weights."""

from __future__ import annotations

import torch
from torch import Tensor


def orientation_loss(weights: Tensor, normals: Tensor, directions: Tensor) -> Tensor:
    """Ref-NeRF orientation loss: mean over rays of sum_i stopgrad(w_i) max(0, n_i . d)^2.

    weights (R, N), normals (R, N, 3), directions (R, 3) -> scalar. It penalizes normals that
    face away from the camera (d points from the camera into the scene). The weights are
    detached as in the paper: otherwise the cheapest way to lower the loss is to make the
    samples with bad normals transparent, and the object shrinks away.
    """
    if normals.shape != (*weights.shape, 3) or directions.shape != (weights.shape[0], 3):
        raise ValueError(
            f"expected weights (R, N), normals (R, N, 3), directions (R, 3); got {tuple(weights.shape)}, "
            f"{tuple(normals.shape)}, {tuple(directions.shape)}"
        )
    facing_away = (normals * directions[:, None, :]).sum(-1).clamp(min=0.0)  # (R, N)
    return (weights.detach() * facing_away.square()).sum(-1).mean()


def opacity_loss(alpha: Tensor) -> Tensor:
    """Mean of sqrt(alpha^2 + 0.01) over accumulated opacities of any shape -> scalar.

    The 0.01 keeps the gradient finite at alpha = 0 (a plain |alpha| is not differentiable there).
    """
    return torch.sqrt(alpha.square() + 0.01).mean()


def ramp(step: int, start: float, end: float, steps: int) -> float:
    """Linear from `start` at step 0 to `end` at `steps`, constant after (steps <= 0: always end)."""
    if steps <= 0:
        return end
    fraction = min(max(step / steps, 0.0), 1.0)
    return start + (end - start) * fraction
