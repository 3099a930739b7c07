"""The closed-form guidance: exact eps against independent computations, exact target renders,
and the acceptance test: SDS on the pixels themselves converges to the target image."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.config import ClosedFormGuidanceConfig, SDSConfig, ShadingConfig
from dreamfusion.guidance.closed_form import (
    COLOR_WORDS,
    ClosedFormGuidance,
    mixture_eps,
    mixture_responsibilities,
)
from dreamfusion.scene.cameras import orbit_cameras


def make_guidance(scale: float = 1.0, **guidance_fields) -> ClosedFormGuidance:
    return ClosedFormGuidance(
        ClosedFormGuidanceConfig(**guidance_fields), SDSConfig(guidance_scale=scale), ShadingConfig()
    )


def test_single_gaussian_eps_is_the_posterior_mean():
    """With one component, E[eps | z] must match Gaussian conditioning done the Tweedie way:
    E[x0 | z] = mu + a s^2 / (a^2 s^2 + sigma^2) (z - a mu), then eps = (z - a E[x0 | z]) / sigma."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 1, 3, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    alpha = torch.tensor([0.9, 0.3], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    s = 0.2
    a = alpha.view(2, 1, 1, 1)
    x0_mean = mu[:, 0] + a * s**2 / (a**2 * s**2 + sigma.view(2, 1, 1, 1) ** 2) * (z - a * mu[:, 0])
    expected = (z - a * x0_mean) / sigma.view(2, 1, 1, 1)
    torch.testing.assert_close(mixture_eps(z, mu, alpha, sigma, s), expected)


def test_mixture_eps_matches_brute_force_integration():
    """A 2-D mixture of 3 Gaussians: integrate E[eps | z] = int (z - a x0) / sigma p(x0 | z) dx0
    over a fine grid of x0, independent of the closed form's responsibilities."""
    means = torch.tensor([[[0.6, -0.4], [-0.5, 0.3], [0.1, 0.8]]], dtype=torch.float64)  # (1, K, 2)
    s = 0.3
    alpha = torch.tensor([0.8], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    z = torch.tensor([[0.2, 0.1]], dtype=torch.float64)  # between components: mixed responsibilities

    axis = torch.linspace(-2.5, 2.5, 1001, dtype=torch.float64)
    x0 = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2)
    prior = sum(torch.exp(-((x0 - m) ** 2).sum(-1) / (2 * s**2)) for m in means[0])
    likelihood = torch.exp(-((z[0] - alpha * x0) ** 2).sum(-1) / (2 * sigma**2))
    posterior = prior * likelihood
    eps_of_x0 = (z[0] - alpha * x0) / sigma  # (N, 2)
    brute = (posterior[:, None] * eps_of_x0).sum(0) / posterior.sum()

    r = mixture_responsibilities(z, means, alpha, sigma, s)
    assert 0.05 < r.max().item() < 0.95  # the test point really mixes components
    torch.testing.assert_close(mixture_eps(z, means, alpha, sigma, s)[0], brute, rtol=1e-6, atol=1e-6)


def test_responsibilities_pick_the_nearby_component():
    guidance = make_guidance()
    cameras = orbit_cameras(1, 16)
    means = guidance.target_means(cameras, torch.tensor([[0.85, 0.15, 0.15]]))  # (1, 3, 3, 16, 16)
    assert means.shape == (1, 3, 3, 16, 16)
    schedule = guidance.schedule
    g = torch.Generator().manual_seed(1)
    for t_value in (50, 300):
        t = torch.tensor([t_value])
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        for k in range(3):
            z = alpha.view(1, 1, 1, 1) * means[:, k] + sigma * torch.randn(1, 3, 16, 16, generator=g)
            r = mixture_responsibilities(z, means, alpha, sigma, 0.05)
            torch.testing.assert_close(r.sum(1), torch.ones(1))
            assert r.argmax(1).item() == k and r[0, k].item() > 0.99
    # Far from all components the log-space softmax must still give finite, normalized weights.
    r = mixture_responsibilities(torch.full((1, 3, 16, 16), 50.0), means, alpha, sigma, 0.05)
    assert torch.isfinite(r).all() and r.sum().item() == pytest.approx(1.0)


def test_target_images_exact_values():
    guidance = make_guidance()
    cameras = orbit_cameras(1, 17, elevation=0.0, distance=1.3)  # odd size: the center ray hits (r, 0, 0)
    color = torch.tensor([0.85, 0.15, 0.15])
    r = guidance.cfg.target_radius

    albedo = guidance.target_images(cameras, color, "albedo")
    assert albedo.shape == (1, 3, 17, 17)
    torch.testing.assert_close(albedo[0, :, 8, 8], color)
    for i, j in [(0, 0), (0, 16), (16, 0), (16, 16)]:
        torch.testing.assert_close(albedo[0, :, i, j], torch.ones(3))  # background shows at the corners

    # Light placements seen from the hit point (r, 0, 0) with normal +x: cos = 1, 1/sqrt(2), 0.
    for light, cos in [((3.0, 0.0, 0.0), 1.0), ((r + 1.0, 0.0, 1.0), 1 / math.sqrt(2)), ((r, 0.0, 5.0), 0.0)]:
        cameras.light_position = torch.tensor([light])
        shaded = 0.9 * cos + 0.1
        lit = guidance.target_images(cameras, color, "lambertian")[0, :, 8, 8]
        torch.testing.assert_close(lit, color * shaded, atol=1e-5, rtol=1e-5)
        plain = guidance.target_images(cameras, color, "textureless")[0, :, 8, 8]
        torch.testing.assert_close(plain, torch.full((3,), shaded), atol=1e-5, rtol=1e-5)

    # The silhouette: a pixel is covered exactly when its ray passes within r of the origin.
    far_camera = orbit_cameras(1, 17, elevation=0.0, distance=1.3, focal_multiplier=0.5)
    covered = (guidance.target_images(far_camera, color, "albedo")[0] != 1.0).any(0)
    half_angle = math.asin(r / 1.3)
    v, u = torch.meshgrid(torch.arange(17) + 0.5, torch.arange(17) + 0.5, indexing="ij")
    angle = torch.atan(torch.hypot(u - 8.5, v - 8.5) / 8.5)
    assert torch.equal(covered, angle < half_angle)


def test_embed_parses_colors():
    guidance = make_guidance(target_color=(0.1, 0.2, 0.3))
    colors = guidance.embed(
        ["a red ball, front view", "a Blue and green cube", "a bored grey cat", "a sphere, back view"]
    )
    expected = [COLOR_WORDS["red"], COLOR_WORDS["blue"], COLOR_WORDS["grey"], (0.1, 0.2, 0.3)]
    torch.testing.assert_close(colors, torch.tensor(expected))
    for bad in ["", "   \n"]:
        with pytest.raises(ValueError, match="non-empty prompt"):
            guidance.embed(["a red ball", bad])
    with pytest.raises(ValueError, match="target_modes"):
        make_guidance(target_modes=("albedo", "glossy"))


def optimize_pixels(guidance: ClosedFormGuidance, init: torch.Tensor, steps: int = 300, lr: float = 0.02):
    """SDS on an identity parameterization: the image itself is the parameter."""
    cameras = orbit_cameras(1, 16)
    embeddings = guidance.embed(["a red ball"])
    theta = init.clone().requires_grad_()
    optimizer = torch.optim.Adam([theta], lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=0.01 * lr)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        out = guidance.sds_loss(theta, embeddings, torch.tensor([0]), cameras, generator, step / steps)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        decay.step()
    return theta.detach(), cameras, embeddings[0]


@pytest.mark.parametrize("init", ["grey", "random"])
def test_sds_on_pixels_converges_to_target(init):
    """Acceptance: with guidance scale 1 the SDS fixed point is the data mean, so the pixels must
    land on the target render (albedo-only data: one component)."""
    guidance = make_guidance(scale=1.0, target_modes=("albedo",))
    start = {
        "grey": torch.full((1, 3, 16, 16), 0.5),
        "random": torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
    }[init]
    theta, cameras, color = optimize_pixels(guidance, start)
    target = guidance.target_images(cameras, color, "albedo")
    initial_error = (start - target).abs().mean().item()
    final_error = (theta - target).abs().mean().item()
    assert initial_error > 0.3
    assert final_error < 0.005
    assert final_error < initial_error / 10


def test_sds_on_pixels_with_mixture_lands_on_nearest_mode():
    """With all three shading modes in the data, a grey start is closest to the textureless render
    (white, lit) and SDS settles on that component, not on an average of the three."""
    guidance = make_guidance(scale=1.0)
    theta, cameras, color = optimize_pixels(guidance, torch.full((1, 3, 16, 16), 0.5))
    errors = {
        m: (theta - guidance.target_images(cameras, color, m)).abs().mean().item()
        for m in ("albedo", "lambertian", "textureless")
    }
    assert errors["textureless"] < 0.02
    assert min(errors["albedo"], errors["lambertian"]) > 5 * errors["textureless"]


def test_large_guidance_scale_overshoots():
    """At omega = 100 the fixed point is pushed past the data (the paper's over-saturation): the
    white background, 1.0 in the target, is driven far above 1 by the identity parameterization."""
    guidance = make_guidance(scale=100.0, target_modes=("albedo",))
    theta, cameras, color = optimize_pixels(guidance, torch.full((1, 3, 16, 16), 0.5))
    target = guidance.target_images(cameras, color, "albedo")
    background = (target == 1.0).all(1, keepdim=True).expand_as(target)
    assert theta[background].mean().item() > 1.5
    assert (theta - target).abs().mean().item() > 0.4


def test_sds_loss_checks_shapes():
    guidance = make_guidance()
    cameras = orbit_cameras(2, 16)
    with pytest.raises(ValueError, match="do not match"):
        guidance.sds_loss(
            torch.rand(2, 3, 8, 8),
            guidance.embed(["a ball"]),
            torch.zeros(2, dtype=torch.long),
            cameras,
            torch.Generator(),
            0.0,
        )
