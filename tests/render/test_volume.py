"""Volume-rendering math against hand-computed values, and its behaviour at the extremes."""

import math

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.render.volume import (
    accumulate,
    accumulated_alpha,
    composite,
    compute_weights,
    density_normals,
    expected_depth,
    sample_along_rays,
)


def test_weights_match_hand_computed_values():
    # Row 0: densities [1, 2, 3], deltas 0.5 -> optical depths [0.5, 1, 1.5].
    #   alpha = 1 - exp(-[0.5, 1, 1.5]); T = exp(-[0, 0.5, 1.5]); w = T * alpha.
    # Row 1: densities [0, 10, 0.5], deltas [1, 0.1, 2] -> optical depths [0, 1, 1].
    density = torch.tensor([[1.0, 2.0, 3.0], [0.0, 10.0, 0.5]], dtype=torch.float64)
    deltas = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.1, 2.0]], dtype=torch.float64)
    weights, transmittance, alpha = compute_weights(density, deltas)

    expected_alpha = torch.tensor(
        [
            [0.3934693402873666, 0.6321205588285577, 0.7768698398515702],
            [0.0, 0.6321205588285577, 0.6321205588285577],
        ],
        dtype=torch.float64,
    )
    expected_t = torch.tensor(
        [[1.0, 0.6065306597126334, 0.22313016014842982], [1.0, 1.0, 0.36787944117144233]], dtype=torch.float64
    )
    expected_w = torch.tensor(
        [
            [0.3934693402873666, 0.3834004995642036, 0.1733430917805659],
            [0.0, 0.6321205588285577, 0.2325441579348883],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(alpha, expected_alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(transmittance, expected_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(weights, expected_w, rtol=0, atol=1e-12)
    # Total opacity telescopes to 1 - exp(-total optical depth).
    torch.testing.assert_close(
        accumulated_alpha(weights),
        torch.tensor([1 - math.exp(-3.0), 1 - math.exp(-2.0)], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


def test_weights_match_cumulative_product_of_alphas():
    g = torch.Generator().manual_seed(0)
    density = torch.rand(5, 16, generator=g, dtype=torch.float64) * 5.0
    deltas = torch.rand(5, 16, generator=g, dtype=torch.float64) * 0.2
    weights, transmittance, alpha = compute_weights(density, deltas)
    survive = torch.cumprod(1.0 - alpha, dim=-1)
    reference_t = torch.cat([torch.ones(5, 1, dtype=torch.float64), survive[:, :-1]], dim=-1)
    torch.testing.assert_close(transmittance, reference_t)
    torch.testing.assert_close(weights, reference_t * alpha)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_densities_give_finite_values_and_gradients(dtype):
    levels = torch.tensor([0.0, 1e-10, 1e4, 1e10], dtype=dtype)
    delta_levels = torch.tensor([0.0, 1e-3, 0.1, 1.0], dtype=dtype)
    g = torch.Generator().manual_seed(1)
    # Every (density, delta) pair appears, in random orders along 64 rays of 12 samples.
    density = levels[torch.randint(0, 4, (64, 12), generator=g)].requires_grad_(True)
    deltas = delta_levels[torch.randint(0, 4, (64, 12), generator=g)].requires_grad_(True)
    weights, transmittance, alpha = compute_weights(density, deltas)
    for out in (weights, transmittance, alpha):
        assert torch.isfinite(out).all()
    assert (weights >= 0).all()
    assert (accumulated_alpha(weights) <= 1.0 + 1e-6).all()

    coeffs = torch.randn(3, 64, 12, generator=g, dtype=dtype)
    loss = (coeffs[0] * weights + coeffs[1] * transmittance + coeffs[2] * alpha).sum()
    d_density, d_deltas = torch.autograd.grad(loss, (density, deltas))
    assert torch.isfinite(d_density).all()
    assert torch.isfinite(d_deltas).all()


def test_zero_deltas_make_samples_transparent():
    density = torch.tensor([[1e10, 5.0, 0.0]])
    weights, transmittance, alpha = compute_weights(density, torch.zeros(1, 3))
    assert torch.equal(weights, torch.zeros(1, 3))
    assert torch.equal(transmittance, torch.ones(1, 3))
    assert torch.equal(alpha, torch.zeros(1, 3))


def test_tiny_optical_depth_keeps_precision():
    # 1 - exp(-1e-10) rounds to 0 in float32; expm1 keeps the value.
    _, _, alpha = compute_weights(torch.tensor([[1e-10]]), torch.tensor([[1.0]]))
    torch.testing.assert_close(alpha, torch.tensor([[1e-10]]), rtol=1e-4, atol=0)


def test_compute_weights_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="density and deltas"):
        compute_weights(torch.ones(2, 3), torch.ones(2, 4))


def test_accumulate_depth_and_composite_by_hand():
    weights = torch.tensor([[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]])
    values = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]],
            [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        ]
    )
    rgb = accumulate(weights, values)
    torch.testing.assert_close(rgb, torch.tensor([[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]))
    t_mid = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    torch.testing.assert_close(expected_depth(weights, t_mid), torch.tensor([1.0, 0.0]))
    alpha = accumulated_alpha(weights)[:, None]  # [[0.75], [0]]
    background = torch.tensor([[0.0, 0.0, 1.0], [0.2, 0.4, 0.6]])
    out = composite(rgb, alpha, background)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.4, 0.6]]))


def test_unstratified_samples_are_bin_centers():
    t_mid, deltas = sample_along_rays(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0]), 4, False, None)
    torch.testing.assert_close(t_mid, torch.tensor([[1.25, 1.75, 2.25, 2.75], [0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(deltas, torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))


def test_stratified_samples_stay_in_their_bins_and_are_reproducible():
    near = torch.tensor([0.5, 1.0, 2.0])
    far = torch.tensor([1.5, 3.0, 2.5])
    n = 8
    t1, d1 = sample_along_rays(near, far, n, True, torch.Generator().manual_seed(3))
    t2, d2 = sample_along_rays(near, far, n, True, torch.Generator().manual_seed(3))
    t3, _ = sample_along_rays(near, far, n, True, torch.Generator().manual_seed(4))
    assert torch.equal(t1, t2) and torch.equal(d1, d2)
    assert not torch.equal(t1, t3)

    width = (far - near) / n
    index = torch.arange(n, dtype=torch.float32)
    lower = near[:, None] + width[:, None] * index
    assert (t1 >= lower - 1e-6).all() and (t1 <= lower + width[:, None] + 1e-6).all()
    # Jittered, not all at the centers.
    assert not torch.allclose(t1, lower + 0.5 * width[:, None])
    torch.testing.assert_close(d1.sum(-1), far - near)


def test_stratified_sampling_needs_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        sample_along_rays(torch.zeros(2), torch.ones(2), 4, True, None)


def _sphere_density(center: torch.Tensor, k: float = 20.0, r0: float = 0.5):
    return lambda x: F.softplus(k * (r0 - (x - center).norm(dim=-1)))


def test_normals_of_a_sphere_point_radially_outward():
    g = torch.Generator().manual_seed(5)
    directions = F.normalize(torch.randn(50, 3, generator=g), dim=-1)
    radii = 0.2 + 0.6 * torch.rand(50, 1, generator=g)
    points = directions * radii
    normals = density_normals(_sphere_density(torch.zeros(3)), points, create_graph=False)
    torch.testing.assert_close(normals, directions, atol=1e-5, rtol=0)


def test_normals_work_under_no_grad_and_vanish_where_density_is_flat():
    points = torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, 0.4]])
    with torch.no_grad():
        normals = density_normals(_sphere_density(torch.zeros(3)), points, create_graph=False)
    torch.testing.assert_close(normals, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-5, rtol=0)
    assert not normals.requires_grad

    flat = density_normals(lambda x: torch.zeros(x.shape[0]) + 0.0 * x.sum(-1), points, create_graph=False)
    assert torch.equal(flat, torch.zeros(2, 3))


def test_normals_with_create_graph_pass_gradients_to_the_geometry():
    center = torch.zeros(3, requires_grad=True)
    points = torch.tensor([[0.3, 0.1, 0.0], [0.0, -0.2, 0.3]])
    normals = density_normals(_sphere_density(center), points, create_graph=True)
    (grad,) = torch.autograd.grad(normals[:, 0].sum(), center)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 1e-3
