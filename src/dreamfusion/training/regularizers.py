"""Geometry regularizers (paper appendix A.2, plus two beyond it) and the linear ramp of their weights."""

from __future__ import annotations

import math

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


def distortion_loss(weights: Tensor, t_mid: Tensor, deltas: Tensor) -> Tensor:
    """mip-NeRF 360's distortion loss, mean over rays -> scalar.

    Per ray: sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta_i, for samples at t_mid (R, N),
    ascending along each ray, in bins of width deltas (R, N), with weights (R, N). It is least
    when a ray's weight sits in one short interval: a surface rather than fog. The double sum
    takes O(N) with prefix sums: sum_ij = 2 sum_i w_i (t_i W_<i - (w t)_<i).
    """
    if not weights.shape == t_mid.shape == deltas.shape or weights.dim() != 2:
        raise ValueError(
            f"expected weights, t_mid and deltas all (R, N); got {tuple(weights.shape)}, "
            f"{tuple(t_mid.shape)}, {tuple(deltas.shape)}"
        )
    wt = weights * t_mid
    before_w = torch.cumsum(weights, dim=-1) - weights  # sum of w_j for j < i
    before_wt = torch.cumsum(wt, dim=-1) - wt
    pairs = 2.0 * (weights * (t_mid * before_w - before_wt)).sum(-1)
    own = (weights.square() * deltas).sum(-1) / 3.0
    return (pairs + own).mean()


def interior_loss(density: Tensor, target: float) -> Tensor:
    """Mean shortfall of log density below log `target` at points hidden inside the body -> scalar.

    Beyond the paper. No render sees inside an opaque body, so SDS leaves the density there where
    initialization and shared parameters put it: a noisy plateau that, cut at a level, is speckle
    rather than a solid (docs/evaluation.md, "Opaque IoU"). Fed points from
    `OccupancyGrid.interior_points`, this raises that inside to `target`. In log space: a cell at
    density 1 and one at 50 both get pushed (under the exp activation, equally hard on the raw
    density), and the push stops at the target; it never lowers a density. Filling can only spread
    to cells already hidden: a cell between a hidden one and the grid's face along some axis is
    hidden along it too.
    """
    return torch.relu(math.log(target) - torch.log(density.float().clamp_min(1e-6))).mean()


def ramp(step: int, start: float, end: float, steps: int) -> float:
    """Linear from `start` at step 0 to `end` at `steps`, constant after (steps <= 0: always end)."""
    if steps <= 0:
        return end
    fraction = min(max(step / steps, 0.0), 1.0)
    return start + (end - start) * fraction
