"""The renderer on a solid sphere of known radius and color, seen from orbit cameras."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamfusion.config import RenderConfig, ShadingConfig
from dreamfusion.render import renderer
from dreamfusion.render.renderer import render, render_views
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.scene.rays import generate_rays, intersect_sphere
from dreamfusion.training.regularizers import orientation_loss

RES = 16
SAMPLES = 32
ALBEDO = (0.8, 0.2, 0.2)
SHADING = ShadingConfig(ambient=0.1, light_intensity=0.9)


class SolidSphere(nn.Module):
    """Density `peak` inside a sphere of `radius` around `center` (a soft step), uniform albedo."""

    def __init__(self, radius: float = 0.4, bound_radius: float = 0.8, peak: float = 50.0):
        super().__init__()
        self.bound_radius = bound_radius
        self.peak = peak
        self.radius = nn.Parameter(torch.tensor(radius))
        self.center = nn.Parameter(torch.zeros(3))
        self.color_logit = nn.Parameter(torch.logit(torch.tensor(ALBEDO)))

    def density(self, points):
        r = (points - self.center).norm(dim=-1)
        inside = r < self.bound_radius
        return torch.where(inside, self.peak * torch.sigmoid(60.0 * (self.radius - r)), torch.zeros_like(r))

    def forward(self, points):
        return self.density(points), torch.sigmoid(self.color_logit).expand(points.shape[0], 3)


class ConstantBackground:
    def __init__(self, color=(1.0, 1.0, 1.0)):
        self.color = torch.tensor(color)

    def __call__(self, directions):
        return self.color.expand(directions.shape)


def direction_background(directions):
    return (directions + 1.0) / 2.0


def cfg(chunk_rays: int = 0, stratified: bool = False) -> RenderConfig:
    return RenderConfig(samples_per_ray=SAMPLES, stratified=stratified, chunk_rays=chunk_rays)


def test_albedo_render_is_opaque_at_center_and_empty_at_corner():
    cameras = orbit_cameras(2, RES, elevation=15.0, distance=1.3)
    out = render(SolidSphere(), ConstantBackground(), cameras, "albedo", cfg(), SHADING)
    assert out.image.shape == (2, 3, RES, RES)
    assert out.alpha.shape == out.depth.shape == (2, 1, RES, RES)
    assert out.normal.shape == (2, 3, RES, RES)
    assert out.weights.shape == (2 * RES * RES, SAMPLES)
    assert out.sample_normals is not None and out.sample_normals.shape == (2 * RES * RES, SAMPLES, 3)
    assert out.directions.shape == (2 * RES * RES, 3)

    c = RES // 2
    assert (out.alpha[:, 0, c, c] > 0.999).all()
    assert (out.alpha[:, 0, 0, 0] < 1e-3).all()
    torch.testing.assert_close(out.image[:, :, c, c], torch.tensor([ALBEDO, ALBEDO]), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.image[:, :, 0, 0], torch.ones(2, 3), atol=2e-3, rtol=0)
    # The surface is at distance 1.3 - 0.4 along the central ray (up to the soft step and sampling).
    torch.testing.assert_close(out.depth[:, 0, c, c], torch.full((2,), 0.9), atol=0.05, rtol=0)
    assert out.image.min() >= 0.0 and out.image.max() <= 1.0 + 1e-6


def test_lambertian_is_darker_away_from_the_light():
    # The light sits 90 degrees to the camera's right: the left half of the sphere sees none of it.
    cameras = orbit_cameras(1, RES, elevation=0.0, distance=1.3, light_offset=(90.0, 0.0))
    sphere, bg = SolidSphere(), ConstantBackground()
    lit = render(sphere, bg, cameras, "lambertian", cfg(), SHADING)
    row, right, left = RES // 2, RES // 2 + 2, RES // 2 - 3  # columns symmetric about the center
    assert lit.alpha[0, 0, row, right] > 0.99 and lit.alpha[0, 0, row, left] > 0.99
    assert lit.image[0, 0, row, right] > lit.image[0, 0, row, left] + 0.1
    # By hand: the right pixel's ray meets the sphere at about (0.372, 0.145, 0), normal
    # (0.93, 0.36, 0); the light at (0, 2.6, 0) is at cos = 0.22 from it, so red = 0.8 (0.9 * 0.22 + 0.1).
    torch.testing.assert_close(lit.image[0, 0, row, right], torch.tensor(0.24), atol=0.03, rtol=0)
    # Only ambient light on the dark side: albedo * l_a.
    torch.testing.assert_close(lit.image[0, :, row, left], 0.1 * torch.tensor(ALBEDO), atol=0.02, rtol=0)

    grey = render(sphere, bg, cameras, "textureless", cfg(), SHADING)
    pixel = grey.image[0, :, row, right]
    torch.testing.assert_close(pixel, pixel[:1].expand(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(grey.image[0, 0, row, right], torch.tensor(0.30), atol=0.04, rtol=0)
    torch.testing.assert_close(grey.image[0, :, row, left], torch.full((3,), 0.1), atol=0.02, rtol=0)


def test_chunked_render_equals_unchunked():
    cameras = orbit_cameras(2, RES)
    sphere, bg = SolidSphere(), ConstantBackground((0.3, 0.5, 0.7))
    whole = render(sphere, bg, cameras, "lambertian", cfg(0, True), SHADING, torch.Generator().manual_seed(7))
    chunked = render(
        sphere, bg, cameras, "lambertian", cfg(37, True), SHADING, torch.Generator().manual_seed(7)
    )
    for name in ("image", "alpha", "depth", "normal", "weights", "sample_normals", "directions"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-6, rtol=0)
    # And the jitter is real: another seed moves the samples.
    other = render(sphere, bg, cameras, "lambertian", cfg(0, True), SHADING, torch.Generator().manual_seed(8))
    assert not torch.allclose(other.weights, whole.weights)


def test_gradients_reach_the_field_through_color_and_normals():
    cameras = orbit_cameras(2, RES)
    sphere = SolidSphere()
    out = render(sphere, ConstantBackground(), cameras, "lambertian", cfg(), SHADING)
    out.image.mean().backward()
    for p in (sphere.radius, sphere.color_logit):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0

    # Normals of this sphere depend on its center alone; the orientation loss sees the center only
    # if the renderer kept the graph of the normals (create_graph) during training.
    sphere.zero_grad()
    out = render(sphere, ConstantBackground(), cameras, "albedo", cfg(), SHADING)
    orientation_loss(out.weights, out.sample_normals, out.directions).backward()
    assert sphere.center.grad is not None and sphere.center.grad.abs().sum() > 0
    assert torch.isfinite(sphere.center.grad).all()


class DenseEverywhere(nn.Module):
    """Breaks the Field contract on purpose (density outside its bound) to show misses never sample."""

    bound_radius = 0.8

    def forward(self, points):
        return torch.full((points.shape[0],), 1e3), torch.zeros(points.shape[0], 3)


def test_rays_that_miss_the_bound_sphere_show_exactly_the_background():
    cameras = orbit_cameras(1, RES, focal_multiplier=0.4)  # wide enough for the corners to miss
    out = render(DenseEverywhere(), direction_background, cameras, "albedo", cfg(), SHADING)
    origins, directions = generate_rays(cameras)
    _, _, hit = intersect_sphere(origins, directions, DenseEverywhere.bound_radius)
    miss = ~hit[0]  # (H, W)
    assert miss.sum() >= 4 and hit.sum() >= 4
    image = out.image[0].permute(1, 2, 0)  # (H, W, 3)
    assert torch.equal(image[miss], direction_background(directions[0][miss]))
    assert torch.equal(out.alpha[0, 0][miss], torch.zeros(int(miss.sum())))
    # Hit rays cross a dense medium: black albedo, opaque.
    assert (out.alpha[0, 0][hit[0]] > 0.99).all()


def test_render_views_is_deterministic_without_a_graph():
    cameras = orbit_cameras(2, RES, elevation=15.0, distance=1.3)
    sphere, bg = SolidSphere(), ConstantBackground()
    views = render_views(sphere, bg, cameras, "lambertian", cfg(stratified=True), SHADING, chunk_rays=100)
    for t in (views.image, views.alpha, views.depth, views.normal):
        assert not t.requires_grad
    assert views.weights.shape == (0, SAMPLES) and views.sample_normals is None

    with torch.no_grad():
        reference = render(sphere, bg, cameras, "lambertian", cfg(), SHADING)
    torch.testing.assert_close(views.image, reference.image, atol=1e-6, rtol=0)
    # The center normal faces the camera, i.e. against the ray direction.
    c = RES // 2
    center_dirs = reference.directions.reshape(2, RES, RES, 3)[:, c, c]
    facing = (F.normalize(views.normal[:, :, c, c], dim=-1) * center_dirs).sum(-1)
    assert (facing < -0.95).all()


def test_render_views_of_albedo_without_normals_is_the_same_image():
    """normals=False (albedo previews): the image and opacity of the render with normals, the
    field evaluated without autograd, the normal output zeros."""
    cameras = orbit_cameras(2, RES, elevation=15.0, distance=1.3)
    sphere, bg = SolidSphere(), ConstantBackground()
    with_normals = render_views(sphere, bg, cameras, "albedo", cfg(), SHADING)
    evaluated = []

    def field(points):
        evaluated.append(torch.is_grad_enabled())
        return sphere(points)

    field.bound_radius = sphere.bound_radius
    without = render_views(field, bg, cameras, "albedo", cfg(), SHADING, normals=False)
    assert evaluated and not any(evaluated)
    torch.testing.assert_close(without.image, with_normals.image, atol=1e-6, rtol=0)
    torch.testing.assert_close(without.alpha, with_normals.alpha, atol=1e-6, rtol=0)
    assert not without.normal.any()
    with pytest.raises(ValueError, match="needs normals"):
        render_views(sphere, bg, cameras, "lambertian", cfg(), SHADING, normals=False)


def test_render_views_takes_normals_only_where_the_weights_show_a_surface(monkeypatch):
    """Without a graph, normals are computed only at samples of weight >= NORMALS_DROPPED_WEIGHT / N:
    the image differs from the one with normals everywhere by less than NORMALS_DROPPED_WEIGHT, and
    the backward pass runs at a small share of the samples."""
    cameras = orbit_cameras(2, RES, elevation=15.0, distance=1.3)
    sphere, bg = SolidSphere(), ConstantBackground()
    normal_points = []
    density = sphere.density

    def counted(points):  # the passes with autograd: those that take normals
        if torch.is_grad_enabled():
            normal_points.append(len(points))
        return density(points)

    monkeypatch.setattr(sphere, "density", counted)
    fast = render_views(sphere, bg, cameras, "lambertian", cfg(), SHADING)
    monkeypatch.setattr(renderer, "NORMALS_DROPPED_WEIGHT", 0.0)
    exact = render_views(sphere, bg, cameras, "lambertian", cfg(), SHADING)
    assert len(normal_points) == 2
    assert normal_points[0] < 0.3 * normal_points[1]  # the samples at the surface, of all that weigh
    error = (fast.image - exact.image).abs().max()
    assert 0 < error < 1.0 / 512.0
    assert (fast.normal - exact.normal).abs().max() < 1.0 / 512.0


class WrongShapeField(SolidSphere):
    def forward(self, points):
        density, albedo = super().forward(points)
        return density[:, None], albedo


def test_input_validation_messages():
    cameras = orbit_cameras(1, 4)
    with pytest.raises(ValueError, match="density of shape"):
        render(WrongShapeField(), ConstantBackground(), cameras, "albedo", cfg(), SHADING)
    with pytest.raises(ValueError, match="needs normals"):
        render(
            SolidSphere(), ConstantBackground(), cameras, "lambertian", cfg(), SHADING, compute_normals=False
        )
    with pytest.raises(ValueError, match="unknown shading mode"):
        render(SolidSphere(), ConstantBackground(), cameras, "phong", cfg(), SHADING)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Generator"):
        render(SolidSphere(), ConstantBackground(), cameras, "albedo", cfg(stratified=True), SHADING)
    out = render(
        SolidSphere(), ConstantBackground(), cameras, "albedo", cfg(), SHADING, compute_normals=False
    )
    assert out.sample_normals is None and torch.equal(out.normal, torch.zeros(1, 3, 4, 4))
