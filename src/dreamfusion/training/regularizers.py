"""Geometry regularizers (paper appendix A.2, plus two beyond it) and the linear ramp of their weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RegularizerConfig:
    """Geometry regularizers (paper appendix A.2)."""

    orientation_weight: float = 1e-2
    """Final weight of the orientation loss (Ref-NeRF) with stop-gradient weights."""
    orientation_weight_start: float = 1e-4
    """Weight of the orientation loss at step 0; ramps linearly to the final weight."""
    orientation_ramp_steps: int = 5000
    """Steps over which the orientation weight ramps up."""
    opacity_weight: float = 1e-3
    """Final weight of the opacity loss sqrt(alpha^2 + 0.01)."""
    opacity_weight_start: float = 1e-3
    """Weight of the opacity loss at step 0."""
    opacity_ramp_steps: int = 0
    """Steps over which the opacity weight ramps up."""
    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (beyond the paper; 0 = off): it draws each ray's
    weight into one short interval, a surface rather than a fog."""
    interior_weight: float = 0.0
    """Final weight of the interior loss (beyond the paper; 0 = off; needs render.occupancy_grid): it
    raises the density inside the body, which no render sees, to interior_density, so that the body is
    solid rather than a shell around speckle."""
    interior_weight_start: float = 0.0
    """Weight of the interior loss at step 0; ramps linearly to the final weight. A light start leaves
    SDS free to carve through the initial blob (a torus's hole) before the inside fills."""
    interior_ramp_steps: int = 0
    """Steps over which the interior weight ramps up (0: the final weight from the first step)."""
    interior_density: float = 100.0
    """Density (world units) the interior loss raises hidden cells to."""
    interior_depth: float = 1.0
    """A cell counts as inside when the occupancy grid's readings put this optical depth between it and
    the outside from each of the six axis directions (1: under 37% of the light reaches it)."""
    interior_points: int = 4096
    """Points drawn in the hidden cells per step."""


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
