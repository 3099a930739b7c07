"""The objective: what the optimizer descends at each step.

    loss = SDS + w_opacity * opacity + w_distortion * distortion + w_orientation * orientation

over the rendered views, plus, on points hidden inside the body, w_interior * interior (a pass of
its own: other points, another backward). Weights that ramp (orientation, opacity, interior) are
read at the step; the distortion weight is constant. The terms themselves are in regularizers.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.config import RegularizerConfig
from dreamfusion.render.occupancy import OccupancyGrid
from dreamfusion.render.renderer import RenderOutput
from dreamfusion.training.regularizers import (
    distortion_loss,
    interior_loss,
    opacity_loss,
    orientation_loss,
    ramp,
)


@dataclass(frozen=True)
class Weights:
    """The regularizers' weights at one step (the ramped ones at that step's value)."""

    orientation: float
    opacity: float
    distortion: float
    interior: float


def weights_at(step: int, reg: RegularizerConfig) -> Weights:
    return Weights(
        orientation=ramp(
            step, reg.orientation_weight_start, reg.orientation_weight, reg.orientation_ramp_steps
        ),
        opacity=ramp(step, reg.opacity_weight_start, reg.opacity_weight, reg.opacity_ramp_steps),
        distortion=reg.distortion_weight,
        interior=ramp(step, reg.interior_weight_start, reg.interior_weight, reg.interior_ramp_steps),
    )


@dataclass(frozen=True)
class LossTerms:
    """A render's loss, term by term: `values` unweighted (0-dim tensors, what the metrics log) for
    the terms that are on, SDS first; `weights` this step's. `total` is the loss to backpropagate."""

    values: dict[str, Tensor]
    weights: Weights

    @property
    def total(self) -> Tensor:
        # Summed in the order the terms were added (SDS first, weight 1), so the loss is the same
        # float whatever is on.
        loss = self.values["sds"]
        for name, value in self.values.items():
            if name != "sds":
                loss = loss + getattr(self.weights, name) * value
        return loss

    def value(self, name: str) -> Tensor:
        """A term's unweighted value; 0 when the term is off."""
        return self.values.get(name, torch.zeros((), device=self.values["sds"].device))


def render_loss(sds: Tensor, out: RenderOutput, weights: Weights) -> LossTerms:
    """The loss terms of one render: `sds` (the guidance's SDS loss of its image, a scalar) and the
    regularizers of its samples. A term whose weight is 0 is not computed (orientation also needs
    per-sample normals in `out`); the opacity term is always there (its weight may ramp from 0)."""
    values = {"sds": sds, "opacity": opacity_loss(out.alpha)}
    if weights.distortion > 0:
        values["distortion"] = distortion_loss(out.weights, out.t_mid, out.deltas)
    if out.sample_normals is not None and weights.orientation > 0:
        values["orientation"] = orientation_loss(out.weights, out.sample_normals, out.directions)
    return LossTerms(values, weights)


def interior_term(
    field: torch.nn.Module,
    occupancy: OccupancyGrid | None,
    reg: RegularizerConfig,
    generator: torch.Generator,
) -> Tensor | None:
    """The interior loss at points hidden inside the body (a scalar, unweighted), or None when it is
    off or the occupancy grid has found no such points yet (before its first refresh)."""
    if reg.interior_weight <= 0 or occupancy is None:
        return None
    points = occupancy.interior_points(reg.interior_points, reg.interior_depth, generator)  # (P, 3)
    if points is None:
        return None
    return interior_loss(field.density(points), reg.interior_density)
