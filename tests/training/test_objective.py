"""The objective: each term at a known weight and step, and the ramps, checked by hand."""

import dataclasses
import math

import pytest
import torch

from dreamfusion.config import RegularizerConfig
from dreamfusion.render.occupancy import OccupancyGrid
from dreamfusion.render.renderer import RenderOutput
from dreamfusion.training.objective import LossTerms, Weights, interior_term, render_loss, weights_at

REG = RegularizerConfig(
    orientation_weight=1e-2,
    orientation_weight_start=1e-4,
    orientation_ramp_steps=100,
    opacity_weight=2e-3,
    opacity_weight_start=0.0,
    opacity_ramp_steps=10,
    distortion_weight=0.5,
    interior_weight=10.0,
    interior_weight_start=1.0,
    interior_ramp_steps=1000,
)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, Weights(orientation=1e-4, opacity=0.0, distortion=0.5, interior=1.0)),
        (5, Weights(orientation=1e-4 + 0.05 * 0.0099, opacity=1e-3, distortion=0.5, interior=1.045)),
        (50, Weights(orientation=0.00505, opacity=2e-3, distortion=0.5, interior=1.45)),
        (500, Weights(orientation=1e-2, opacity=2e-3, distortion=0.5, interior=5.5)),
        (5000, Weights(orientation=1e-2, opacity=2e-3, distortion=0.5, interior=10.0)),
    ],
)
def test_weights_ramp_linearly_from_start_to_final_then_hold(step, expected):
    got = weights_at(step, REG)
    for name in ("orientation", "opacity", "distortion", "interior"):
        assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=1e-12, abs=1e-15), name


def _render() -> RenderOutput:
    """One pixel, one ray of two samples at t = 1 and 2 (bins 0.1 wide) sharing the weight; the first
    sample's normal faces away from the camera (along the ray), the second towards it."""
    return RenderOutput(
        image=torch.zeros(1, 3, 1, 1),
        alpha=torch.zeros(1, 1, 1, 1),
        depth=torch.zeros(1, 1, 1, 1),
        normal=torch.zeros(1, 3, 1, 1),
        weights=torch.tensor([[0.5, 0.5]]),
        t_mid=torch.tensor([[1.0, 2.0]]),
        deltas=torch.tensor([[0.1, 0.1]]),
        sample_normals=torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]]),
        directions=torch.tensor([[0.0, 0.0, 1.0]]),
        samples_evaluated=2,
    )


# By hand: opacity sqrt(0^2 + 0.01) = 0.1; distortion 2 * 0.5 * 0.5 * |1 - 2| + (0.25 * 0.1 + 0.25 * 0.1) / 3
# = 0.5 + 0.05 / 3; orientation 0.5 * max(0, n1 . d)^2 + 0.5 * max(0, n2 . d)^2 = 0.5 * 1 + 0.5 * 0 = 0.5.
OPACITY, DISTORTION, ORIENTATION = 0.1, 0.5 + 0.05 / 3, 0.5


def test_each_term_by_hand_and_the_total_weighs_them():
    sds = torch.tensor(2.0, requires_grad=True)
    weights = Weights(orientation=0.1, opacity=1.0, distortion=0.5, interior=0.0)
    terms = render_loss(sds, _render(), weights)
    assert list(terms.values) == ["sds", "opacity", "distortion", "orientation"]
    assert terms.value("sds").item() == 2.0
    assert terms.value("opacity").item() == pytest.approx(OPACITY, rel=1e-6)
    assert terms.value("distortion").item() == pytest.approx(DISTORTION, rel=1e-6)
    assert terms.value("orientation").item() == pytest.approx(ORIENTATION, rel=1e-6)
    expected = 2.0 + 1.0 * OPACITY + 0.5 * DISTORTION + 0.1 * ORIENTATION
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)
    terms.total.backward()
    assert sds.grad.item() == 1.0  # SDS enters with weight 1


def test_terms_with_weight_zero_or_no_normals_are_left_out():
    sds = torch.tensor(2.0)
    weights = Weights(orientation=0.0, opacity=0.5, distortion=0.0, interior=0.0)
    terms = render_loss(sds, _render(), weights)
    assert list(terms.values) == ["sds", "opacity"]
    assert terms.value("distortion").item() == 0.0 and terms.value("orientation").item() == 0.0
    assert terms.total.item() == pytest.approx(2.0 + 0.5 * OPACITY, rel=1e-6)
    no_normals = dataclasses.replace(_render(), sample_normals=None)
    on = Weights(orientation=0.1, opacity=0.5, distortion=0.0, interior=0.0)
    assert "orientation" not in render_loss(sds, no_normals, on).values


def test_the_ramped_weights_of_a_step_weigh_its_terms():
    sds = torch.tensor(0.0)
    terms = render_loss(sds, _render(), weights_at(50, REG))  # orientation 0.00505, opacity 2e-3
    expected = 2e-3 * OPACITY + 0.5 * DISTORTION + 0.00505 * ORIENTATION
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)
    assert isinstance(terms, LossTerms)


class _Uniform(torch.nn.Module):
    """A field of one density everywhere."""

    def __init__(self, density: float):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(density))

    def density(self, points):
        return self.value.expand(points.shape[0])


def test_interior_term_is_the_log_shortfall_inside_and_none_when_off():
    reg = RegularizerConfig(interior_weight=10.0, interior_density=100.0, interior_points=64)
    gen = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(1.0, 8)
    field = _Uniform(10.0)
    assert interior_term(field, grid, reg, gen) is None  # no refresh yet: nothing known to be inside
    assert interior_term(field, None, reg, gen) is None
    grid.update(field, gen)
    loss = interior_term(field, grid, reg, gen)
    assert loss.item() == pytest.approx(math.log(100.0) - math.log(10.0), rel=1e-6)  # log 100 - log 10
    assert interior_term(_Uniform(1000.0), grid, reg, gen).item() == 0.0  # above the target: no push
    off = dataclasses.replace(reg, interior_weight=0.0)
    assert interior_term(field, grid, off, gen) is None
