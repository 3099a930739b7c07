"""Front consistency of objects with a front: is the front where it should be, and is there only one?

The prediction is compared with the truth turned by 0, 90, 180 and 270 degrees about z, only in
the region where those four truths disagree (in occupancy, or in albedo where all of them are
occupied): everywhere else the comparison cannot tell the rotations apart. At each point of that
region the agreement with a rotated truth is 1 when both are empty, 0 when one is occupied and the
other is not, and 1 - mean |albedo difference| when both are occupied; a rotation's score is the
mean agreement. The rule (docs/evaluation.md):

- the front is right when the unrotated truth scores strictly highest;
- with `best` the highest-scoring rotation, the object has two fronts (a Janus object) when, where
  the truth turned by `best` and its half turn disagree, the union of the two (an object with a
  front at both ends) matches better than either of them alone.

The second rule compares the prediction with what a Janus object actually is, so an object that is
long in x (the house, the duck), whose half turn shares its whole silhouette, is not called
two-faced for that alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.eval.geometry import DENSITY_LEVEL, aligned_points, field_device, grid_points
from dreamfusion.fields.base import Field
from dreamfusion.world import OBJECTS, WorldObject

ROTATIONS = (0, 90, 180, 270)
"""Degrees about +z, counter-clockwise seen from above."""

ALBEDO_DIFFERENT = 0.05
"""Occupied points whose rotated truths' albedos differ by more than this (max over channels)
belong to the discriminating region."""


def rotate_z(points: Tensor, degrees: float) -> Tensor:
    """Rotate points (N, 3) by `degrees` about +z."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = points.new_tensor(((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0)))
    return points @ rotation.T


def rotated_truth(obj: WorldObject, points: Tensor, degrees: float) -> tuple[Tensor, Tensor]:
    """Occupancy (N,) and albedo (N, 3) of the object turned by `degrees` about z, at points (N, 3)."""
    local = rotate_z(points, -degrees)
    return obj.occupancy(local), obj.albedo(local)


def agreement(pred: Tensor, pred_albedo: Tensor, occupancy: Tensor, albedo: Tensor) -> Tensor:
    """Per point: 1 when both are empty, 0 when one is occupied and the other not, and
    1 - mean |albedo difference| when both are occupied. (M,) bools, (M, 3) albedos -> (M,)."""
    color_match = 1.0 - (pred_albedo.float() - albedo).abs().mean(-1)
    return torch.where(pred & occupancy, color_match, (pred == occupancy).float())


@dataclass
class FrontResult:
    scores: dict[int, float]
    """Mean agreement with the truth rotated by each of ROTATIONS."""
    best: int
    """The rotation that matches best."""
    correct: bool
    """The unrotated truth matches strictly best: the front faces +x."""
    two_fronts: bool
    """Where `best` and its half turn disagree, both together match better than either (a Janus object)."""
    margin: float
    """scores[0] minus the best other score: > 0 when correct; its size says how clearly."""
    region_points: int
    """Points of the discriminating region (at the chosen resolution)."""
    janus_scores: dict[str, float]
    """Mean agreement where `best` and its half turn disagree, with "best", "opposite" and "both"."""


def disagree(occupancy: Tensor, albedo: Tensor) -> Tensor:
    """Where truths disagree: some occupied and some not, or all occupied with albedos more than
    ALBEDO_DIFFERENT apart in some channel. (K, M) bools, (K, M, 3) albedos -> (M,) bools."""
    spread = (albedo.amax(0) - albedo.amin(0)).amax(-1)  # (M,)
    return (occupancy != occupancy[:1]).any(0) | (occupancy.all(0) & (spread > ALBEDO_DIFFERENT))


def discriminating_region(
    obj: WorldObject, resolution: int = 96, bound: float = 0.7
) -> tuple[Tensor, Tensor, Tensor]:
    """Grid points where the four rotated truths disagree.

    Returns points (M, 3), the rotated truths' occupancy (4, M) and albedo (4, M, 3) there.
    """
    points = grid_points(resolution, bound)
    occupancy, albedo = zip(*(rotated_truth(obj, points, d) for d in ROTATIONS), strict=True)
    occupancy, albedo = torch.stack(occupancy), torch.stack(albedo)  # (4, N), (4, N, 3)
    differs = disagree(occupancy, albedo)
    return points[differs], occupancy[:, differs], albedo[:, differs]


def front_rule(scores: dict[int, float]) -> tuple[int, bool, float]:
    """(best rotation, front correct, margin) from the four scores; see the module docstring."""
    best = max(ROTATIONS, key=lambda d: scores[d])
    margin = scores[0] - max(scores[d] for d in ROTATIONS if d != 0)
    return best, margin > 0.0, margin


def two_fronts_rule(janus: dict[str, float]) -> bool:
    """A Janus object: the union of `best` and its half turn matches better than either alone."""
    return janus["both"] > max(janus["best"], janus["opposite"])


@torch.no_grad()
def front_consistency(
    field: Field,
    obj: WorldObject | str,
    color: str | None = None,
    scale: float = 1.0,
    shift: float = 0.0,
    level: float = DENSITY_LEVEL,
    resolution: int = 96,
) -> FrontResult:
    """Score the field against the object (painted `color`) turned four ways; see the module docstring.

    `scale` and `shift` are the alignment of the unrotated object (`geometry.aligned_iou`); turns
    about z keep both meaningful. Raises ValueError for an object without a front.
    """
    obj = OBJECTS[obj] if isinstance(obj, str) else obj
    if obj.front is None:
        raise ValueError(f"'{obj.name}' has no distinct front")
    if color is not None:
        obj = obj.with_color(color)
    points, occupancy, albedo = discriminating_region(obj, resolution)
    device = field_device(field)
    points, occupancy, albedo = points.to(device), occupancy.to(device), albedo.to(device)
    density, pred_albedo = field(aligned_points(points, scale, shift))
    pred = density.float() > level  # (M,)
    scores = {
        degrees: float(agreement(pred, pred_albedo, occupancy[i], albedo[i]).mean())
        for i, degrees in enumerate(ROTATIONS)
    }
    best, correct, margin = front_rule(scores)
    janus = janus_scores(obj, points, occupancy, albedo, pred, pred_albedo, best)
    return FrontResult(scores, best, correct, two_fronts_rule(janus), margin, len(points), janus)


def janus_scores(
    obj: WorldObject,
    points: Tensor,  # (M, 3): the discriminating region
    occupancy: Tensor,  # (4, M): the turned truths there
    albedo: Tensor,  # (4, M, 3)
    pred: Tensor,  # (M,) bool: the prediction's occupancy
    pred_albedo: Tensor,  # (M, 3)
    best: int,
) -> dict[str, float]:
    """Agreement with the truth turned by `best`, by `best` + 180, and with their union, where those
    two turns disagree. The union is occupied where either is, with the albedo of the nearer copy."""
    opposite = (best + 180) % 360
    b, o = ROTATIONS.index(best), ROTATIONS.index(opposite)
    pair = disagree(occupancy[[b, o]], albedo[[b, o]])
    at = points[pair]
    nearer_b = obj.sdf(rotate_z(at, -best)) <= obj.sdf(rotate_z(at, -opposite))
    union_albedo = torch.where(nearer_b[:, None], albedo[b, pair], albedo[o, pair])
    truths = {
        "best": (occupancy[b, pair], albedo[b, pair]),
        "opposite": (occupancy[o, pair], albedo[o, pair]),
        "both": (occupancy[b, pair] | occupancy[o, pair], union_albedo),
    }
    p, pa = pred[pair], pred_albedo[pair]
    return {name: float(agreement(p, pa, occ, alb).mean()) for name, (occ, alb) in truths.items()}
