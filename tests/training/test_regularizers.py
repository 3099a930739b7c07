"""Orientation and opacity losses, and the weight ramp."""

import math

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.training.regularizers import distortion_loss, opacity_loss, orientation_loss, ramp


def _rays():
    directions = F.normalize(torch.tensor([[0.0, 0.0, -1.0], [1.0, 1.0, 0.0]]), dim=-1)  # (R=2, 3)
    weights = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.0, 0.6]])  # (R, N=3)
    return weights, directions


def test_orientation_loss_is_zero_for_camera_facing_normals():
    weights, directions = _rays()
    facing = -directions[:, None, :].expand(2, 3, 3)
    assert orientation_loss(weights, facing, directions).item() == 0.0
    # Perpendicular normals are not penalized either (max(0, 0) = 0).
    side = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])[:, None, :].expand(2, 3, 3)
    assert orientation_loss(weights, side, directions).item() == 0.0


def test_orientation_loss_value_for_back_facing_normals():
    weights, directions = _rays()
    # Normals along the ray: n . d = 1 for every sample, so each ray costs sum_i w_i.
    back = directions[:, None, :].expand(2, 3, 3)
    expected = (1.0 + 0.7) / 2
    assert orientation_loss(weights, back, directions).item() == pytest.approx(expected)
    # Half-way normals (n . d = cos 60 = 0.5) cost a quarter of that.
    tilt = torch.tensor([0.0, math.sqrt(3) / 2, -0.5])  # n . d = 0.5 with d = -z
    normals = torch.stack([tilt.expand(3, 3), tilt.expand(3, 3)])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    assert orientation_loss(weights, normals, dirs).item() == pytest.approx(0.25 * expected)


def test_orientation_loss_stops_gradients_into_weights_but_not_normals():
    weights, directions = _rays()
    weights = weights.clone().requires_grad_(True)
    normals = (directions[:, None, :].expand(2, 3, 3) + 0.1).clone().requires_grad_(True)
    loss = orientation_loss(weights, normals, directions)
    assert loss.grad_fn is not None
    grad_w, grad_n = torch.autograd.grad(loss, (weights, normals), allow_unused=True)
    assert grad_w is None or torch.equal(grad_w, torch.zeros_like(weights))
    assert grad_n is not None and grad_n.abs().sum() > 0
    # d/dn of w max(0, n.d)^2 / R = 2 w (n.d) d / R for back-facing samples.
    n_dot_d = (normals.detach() * directions[:, None, :]).sum(-1, keepdim=True)
    torch.testing.assert_close(grad_n, 2 * weights.detach()[..., None] * n_dot_d * directions[:, None, :] / 2)


def test_orientation_loss_rejects_bad_shapes():
    weights, directions = _rays()
    with pytest.raises(ValueError, match="normals"):
        orientation_loss(weights, torch.zeros(2, 4, 3), directions)


def test_opacity_loss_values():
    assert opacity_loss(torch.zeros(5)).item() == pytest.approx(0.1)
    assert opacity_loss(torch.ones(2, 1, 3, 3)).item() == pytest.approx(math.sqrt(1.01))
    assert opacity_loss(torch.tensor([0.0, 1.0])).item() == pytest.approx((0.1 + math.sqrt(1.01)) / 2)
    alpha = torch.zeros(3, requires_grad=True)
    opacity_loss(alpha).backward()
    assert torch.isfinite(alpha.grad).all()


def test_ramp_values():
    assert ramp(0, 1e-4, 1e-2, 5000) == pytest.approx(1e-4)
    assert ramp(2500, 1e-4, 1e-2, 5000) == pytest.approx(0.5 * (1e-4 + 1e-2))
    assert ramp(5000, 1e-4, 1e-2, 5000) == pytest.approx(1e-2)
    assert ramp(9000, 1e-4, 1e-2, 5000) == pytest.approx(1e-2)
    assert ramp(0, 1e-4, 1e-2, 0) == 1e-2
    assert ramp(3, 1.0, 0.0, 4) == pytest.approx(0.25)


def brute_force_distortion(weights, t_mid, deltas):
    gaps = (t_mid[:, :, None] - t_mid[:, None, :]).abs()
    pairs = (weights[:, :, None] * weights[:, None, :] * gaps).sum((1, 2))
    return (pairs + (weights.square() * deltas).sum(-1) / 3.0).mean()


def test_distortion_loss_equals_its_double_sum_and_prefers_a_surface():
    g = torch.Generator().manual_seed(0)
    deltas = torch.rand(5, 16, generator=g) * 0.1 + 0.01
    t_mid = 1.0 + torch.cumsum(deltas, -1) - deltas / 2
    weights = torch.rand(5, 16, generator=g) / 16
    expected = brute_force_distortion(weights, t_mid, deltas)
    torch.testing.assert_close(distortion_loss(weights, t_mid, deltas), expected)
    # A ray's weight in one bin costs w^2 delta / 3; the same weight spread over the ray costs more.
    surface = torch.zeros(1, 16)
    surface[0, 7] = 0.9
    fog = torch.full((1, 16), 0.9 / 16)
    one = distortion_loss(surface, t_mid[:1], deltas[:1])
    torch.testing.assert_close(one, 0.81 * deltas[0, 7] / 3)
    assert distortion_loss(fog, t_mid[:1], deltas[:1]) > 3 * one
    # Its gradient flows to the weights (and so to the density).
    w = weights.clone().requires_grad_(True)
    distortion_loss(w, t_mid, deltas).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="all \\(R, N\\)"):
        distortion_loss(weights, t_mid[:, :8], deltas)
