"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"), as a conditional
noise prediction that the one CFG formula in `dreamfusion.guidance.sds` then scales.

Multi-face ("Janus") objects appear when every view is pushed toward the canonical front. Perp-Neg
interpolates the positive prompt between neighbouring view prompts by azimuth and uses the other
views' prompts as negatives, removing only the part of each negative direction that is perpendicular
to the positive one (so a negative cannot cancel the positive prompt itself):

    e_pos   = eps(pos) - eps(uncond)
    e_neg_k = eps(neg_k) - eps(uncond)
    eps_cond_pn = eps(uncond) + e_pos - sum_k w_k perp(e_neg_k, e_pos),  perp(x, y) = x - (x.y / y.y) y

so that `guided_eps(eps_uncond, eps_cond_pn, s, 'uncond')` = eps_u + s (e_pos - sum_k w_k perp_k), the
Perp-Neg guidance. The weights w_k follow threestudio's shifted exponential schedules
w(r) = a exp(-b r) + c (config: guidance.perp_neg_*), with r measuring how close the camera is to
the view named first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.scene.prompts import VIEWS

FRONT, SIDE, BACK, OVERHEAD = (VIEWS.index(v) for v in ("front", "side", "back", "overhead"))
UNCOND = len(VIEWS)
"""Index of the unconditional embedding appended after the view prompts (a zero-weight dummy negative)."""


def perpendicular_component(x: Tensor, y: Tensor, eps: float = 1e-6) -> Tensor:
    """The part of each x[b] perpendicular to y[b]: x - (<x, y> / <y, y>) y. x, y (B, ...) -> (B, ...)."""
    flat_x, flat_y = x.flatten(1).float(), y.flatten(1).float()
    coef = (flat_x * flat_y).sum(1) / (flat_y * flat_y).sum(1).clamp_min(eps)  # (B,)
    return (flat_x - coef[:, None] * flat_y).view_as(x).to(x.dtype)


def perp_neg_conditional(eps_uncond: Tensor, eps_pos: Tensor, eps_negs: Tensor, weights: Tensor) -> Tensor:
    """The conditional prediction that makes CFG equal Perp-Neg guidance.

    eps_uncond, eps_pos (B, C, H, W); eps_negs (K, B, C, H, W); weights (B, K), subtracted (a positive
    weight pushes away from that negative). Returns eps_uncond + e_pos - sum_k w_k perp(e_neg_k, e_pos).
    """
    e_pos = eps_pos - eps_uncond
    push = torch.zeros_like(e_pos)
    for k in range(eps_negs.shape[0]):
        w = weights[:, k].to(e_pos.dtype).view(-1, *([1] * (e_pos.dim() - 1)))
        push = push + w * perpendicular_component(eps_negs[k] - eps_uncond, e_pos)
    return eps_uncond + e_pos - push


def shifted_exp(params: tuple[float, float, float], r: Tensor) -> Tensor:
    """a exp(-b r) + c for params (a, b, c): the Perp-Neg negative weight at closeness r in [0, 1]."""
    a, b, c = params
    return a * torch.exp(-b * r) + c


@dataclass
class PerpNegPlan:
    """What each image of a batch is scored against.

    positive (B, V): mixing weights over the embedded prompts (rows summing to 1);
    negatives (B, K) long: indices of the negative prompts (UNCOND = the unconditional embedding);
    weights (B, K): how strongly each negative is pushed away from (0 for dummies).
    """

    positive: Tensor
    negatives: Tensor
    weights: Tensor


def perp_neg_plan(
    azimuth: Tensor,  # (B,) degrees, 0 = front
    overhead: Tensor,  # (B,) bool: the camera got the overhead prompt
    front_side: tuple[float, float, float],
    side_front: tuple[float, float, float],
    side_back: tuple[float, float, float],
    front_back: tuple[float, float, float],
) -> PerpNegPlan:
    """Positive mix and two weighted negatives per camera, over the VIEWS prompts (threestudio's scheme).

    Front half (|azimuth| < 90): positive r front + (1 - r) side, r = 1 - |az| / 90; negatives front
    (weight front_side(r)) and side (weight side_front(1 - r)). Back half: positive r side + (1 - r)
    back, r = 2 - |az| / 90; negatives side (side_back(r)) and front (front_back(r)). Overhead cameras
    keep the overhead prompt and get two zero-weight unconditional dummies so the batch stays rectangular.
    """
    az = (torch.remainder(azimuth.float() + 180.0, 360.0) - 180.0).abs()  # (B,) in [0, 180]
    B = az.shape[0]
    front_half = az < 90.0
    r = torch.where(front_half, 1.0 - az / 90.0, 2.0 - az / 90.0).clamp(0.0, 1.0)
    positive = torch.zeros(B, len(VIEWS), device=az.device)
    rows = torch.arange(B, device=az.device)
    first = torch.where(front_half, FRONT, SIDE)
    second = torch.where(front_half, SIDE, BACK)
    positive[rows, first] += r
    positive[rows, second] += 1.0 - r
    negatives = torch.stack([first, torch.where(front_half, SIDE, FRONT)], dim=1)  # (B, 2)
    weights = torch.stack(
        [
            torch.where(front_half, shifted_exp(front_side, r), shifted_exp(side_back, r)),
            torch.where(front_half, shifted_exp(side_front, 1.0 - r), shifted_exp(front_back, r)),
        ],
        dim=1,
    )
    overhead = overhead.to(az.device)
    positive[overhead] = 0.0
    positive[overhead, OVERHEAD] = 1.0
    negatives[overhead] = UNCOND
    weights[overhead] = 0.0
    return PerpNegPlan(positive=positive, negatives=negatives, weights=weights)
