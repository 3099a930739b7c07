"""Empty-space skipping: the occupancy grid, renders through it, and training with it."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from dreamfusion.config import RenderConfig, ShadingConfig
from dreamfusion.errors import UserError
from dreamfusion.fields.analytic import SphereField
from dreamfusion.render.occupancy import OccupancyGrid, hidden_cells
from dreamfusion.render.renderer import render
from dreamfusion.render.volume import sample_along_rays
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.scene.rays import generate_rays, intersect_sphere
from dreamfusion.training.regularizers import interior_loss, orientation_loss
from dreamfusion.training.trainer import Trainer, read_metrics
from tests.conftest import tiny_config
from tests.training.test_trainer import _backend, _state

BOUND = 0.8
RES = 16
SAMPLES = 32
SHADING = ShadingConfig()


class MovableSphere(nn.Module):
    """SphereField's density with a trainable radius, center and color, so gradients can be compared."""

    bound_radius = BOUND

    def __init__(self, radius: float = 0.3, sharpness: float = 100.0, peak: float = 100.0):
        super().__init__()
        self.sharpness, self.peak = sharpness, peak
        self.radius = nn.Parameter(torch.tensor(radius))
        self.center = nn.Parameter(torch.tensor([0.02, -0.01, 0.03]))
        self.color_logit = nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))

    def density(self, points):
        sq = ((points - self.center) ** 2).sum(-1)
        density = self.peak * torch.sigmoid(self.sharpness * (self.radius - torch.sqrt(sq + 1e-12)))
        inside = (points * points).sum(-1) <= BOUND**2
        return torch.where(inside, density, torch.zeros_like(density))

    def forward(self, points):
        return self.density(points), torch.sigmoid(self.color_logit).expand(points.shape[0], 3)


class Recording(nn.Module):
    """Wraps a field and keeps every batch of points it is asked about."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.bound_radius, self.seen = inner, inner.bound_radius, []

    def density(self, points):
        return self.inner.density(points)

    def forward(self, points):
        self.seen.append(points.detach().clone())
        return self.inner(points)


def background(directions):
    return (directions + 1.0) / 2.0


def cfg(chunk_rays: int = 0, stratified: bool = True) -> RenderConfig:
    return RenderConfig(samples_per_ray=SAMPLES, stratified=stratified, chunk_rays=chunk_rays)


def grid_of(field, resolution: int = 32, threshold: float = 0.01, updates: int = 1) -> OccupancyGrid:
    grid = OccupancyGrid(BOUND, resolution, threshold)
    generator = torch.Generator().manual_seed(0)
    for _ in range(updates):
        grid.update(field, generator)
    return grid


def test_a_fresh_grid_is_all_occupied_inside_the_cube():
    grid = OccupancyGrid(BOUND, 8)
    points = torch.tensor([[0.0, 0.0, 0.0], [0.79, -0.79, 0.79], [0.81, 0.0, 0.0], [0.0, -2.0, 0.0]])
    assert grid.occupied(points).tolist() == [True, True, False, False]
    assert grid.occupied_fraction() == 1.0


def test_grid_from_a_sphere_marks_inside_occupied_and_far_outside_empty():
    sphere = SphereField(radius=0.3, color=(1.0, 0.0, 0.0), bound_radius=BOUND)
    grid = grid_of(sphere, resolution=32)
    cell = 2 * BOUND / 32
    centers = (torch.arange(32) + 0.5) * cell - BOUND
    xyz = torch.stack(torch.meshgrid(centers, centers, centers, indexing="ij"), dim=-1)  # (32, 32, 32, 3)
    dist = xyz.norm(dim=-1)
    # A cell lies within half its diagonal (0.043) of its center: entirely inside the surface,
    # density >= 50 at every point; entirely beyond 0.4, density below 100 e^-10 = 5e-3.
    assert grid.mask[dist < 0.3 - 0.05].all()
    assert not grid.mask[dist > 0.4 + 0.05].any()
    assert grid.occupied(torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.1, 0.1]])).all()
    assert not grid.occupied(torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, -0.7]])).any()
    assert 0.0 < grid.occupied_fraction() < 0.2


def test_a_field_dense_up_to_the_bound_fills_every_cell_of_the_sphere():
    # Cells across the bounding sphere are read inside it, not at draws beyond it where density is 0.
    grid = grid_of(MovableSphere(radius=1.0), resolution=16)
    assert grid.occupied_fraction() == 1.0
    assert grid.occupied(torch.tensor([[0.79, 0.0, 0.0], [0.45, 0.45, 0.45]])).all()
    assert not grid.occupied(torch.tensor([[0.75, 0.75, 0.75]])).any()  # no cell of the sphere


def test_a_faint_field_keeps_its_cells_and_a_zero_field_keeps_all():
    faint = SphereField(radius=0.3, color=(1.0, 0.0, 0.0), bound_radius=BOUND, peak_density=1e-3)
    grid = grid_of(faint, threshold=0.01)  # all below the threshold: the mean takes over
    assert grid.occupied(torch.zeros(1, 3)).all()
    assert 0.0 < grid.occupied_fraction() < 0.2
    zero = SphereField(radius=0.3, color=(1.0, 0.0, 0.0), bound_radius=BOUND, peak_density=0.0)
    assert grid_of(zero).occupied_fraction() == 1.0


def test_decay_forgets_space_the_field_left():
    sphere = MovableSphere(radius=0.5)
    grid = OccupancyGrid(BOUND, 16, threshold=0.01, decay=0.5)
    grid.update(sphere, torch.Generator().manual_seed(0))
    shell = torch.tensor([[0.45, 0.05, 0.05]])  # in the cell [0.4, 0.5] x [0, 0.1] x [0, 0.1]
    assert grid.occupied(shell).all()
    before = float(grid.density[12, 8, 8])  # (0.45 + 0.8) / 0.1 = 12.5
    with torch.no_grad():
        sphere.radius.fill_(0.1)  # density below 1e-10 in that cell
    updates = 0
    while grid.occupied(shell).all():
        grid.update(sphere, torch.Generator().manual_seed(updates))
        updates += 1
    assert updates == math.ceil(math.log2(before / 0.01))  # the first k with before * 0.5^k < 0.01


def _render(field, grid=None, chunk_rays=0, seed=7, mode="lambertian"):
    cameras = orbit_cameras(2, RES, elevation=20.0, distance=1.3)
    return render(
        field,
        background,
        cameras,
        mode,
        cfg(chunk_rays),
        SHADING,
        torch.Generator().manual_seed(seed),
        occupancy=grid,
    )


def test_a_render_before_the_first_update_is_the_render_without_a_grid():
    sphere = MovableSphere()
    plain, fresh = _render(sphere), _render(sphere, OccupancyGrid(BOUND, 32))
    for name in ("image", "alpha", "depth", "normal", "weights", "sample_normals"):
        assert torch.equal(getattr(plain, name), getattr(fresh, name)), name


def conservative_grid(sphere: MovableSphere, margin: float, resolution: int = 32) -> OccupancyGrid:
    """A grid marking every cell that comes within `radius + margin` of the sphere's center."""
    grid = OccupancyGrid(BOUND, resolution)
    index = torch.arange(resolution, dtype=torch.float32)
    lower = torch.stack(torch.meshgrid(index, index, index, indexing="ij"), dim=-1) * grid.cell_size - BOUND
    center = sphere.center.detach()
    nearest = torch.maximum(torch.minimum(center, lower + grid.cell_size), lower)  # (res, res, res, 3)
    grid.mask.copy_((nearest - center).norm(dim=-1) < float(sphere.radius.detach()) + margin)
    return grid


def _loss_and_grads(sphere, grid):
    sphere.zero_grad()
    out = _render(sphere, grid)
    loss = (out.image * torch.linspace(0.0, 1.0, RES)).mean()
    (loss + orientation_loss(out.weights, out.sample_normals, out.directions)).backward()
    return out, {name: p.grad.clone() for name, p in sphere.named_parameters()}


def test_render_through_a_conservative_grid_matches_the_render_without():
    # 0.2 beyond the surface the density is below 100 e^-20 = 2e-7: what the grid drops is nothing.
    sphere = MovableSphere()
    plain, plain_grads = _loss_and_grads(sphere, None)
    skipped, grads = _loss_and_grads(sphere, conservative_grid(sphere, margin=0.2))
    assert skipped.samples_evaluated < 0.5 * plain.samples_evaluated
    # Per-sample normals differ where skipped (zero there, not the field's), but those weigh nothing.
    _assert_same_render(skipped, grads, plain, plain_grads, ("image", "alpha", "depth", "normal", "weights"))


def _assert_same_render(out, grads, reference, reference_grads, names):
    """The outputs `names` within 1e-6, and every parameter's (nonzero) gradient within 1e-5."""
    for name in names:
        torch.testing.assert_close(getattr(out, name), getattr(reference, name), atol=1e-6, rtol=0)
    for name in reference_grads:
        assert reference_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], reference_grads[name], atol=1e-7, rtol=1e-5)


def test_early_termination_skips_hidden_samples_and_moves_renders_by_less_than_its_threshold():
    """render.min_transmittance: a training render leaves out the samples behind an opaque surface
    (found by a density pass without autograd); what they weigh adds up to less than the threshold,
    so the image, the opacity and every gradient move by no more than that. Renders without a graph
    (previews, exports) evaluate every sample."""
    sphere = MovableSphere(radius=0.5)
    cameras = orbit_cameras(2, RES, elevation=20.0, distance=1.3)

    def run(min_transmittance):
        sphere.zero_grad()
        render_cfg = dataclasses.replace(cfg(), min_transmittance=min_transmittance)
        out = render(
            sphere, background, cameras, "lambertian", render_cfg, SHADING, torch.Generator().manual_seed(7)
        )
        loss = (out.image * torch.linspace(0.0, 1.0, RES)).mean()
        (loss + orientation_loss(out.weights, out.sample_normals, out.directions)).backward()
        return out, {name: p.grad.clone() for name, p in sphere.named_parameters()}

    exact, exact_grads = run(0.0)
    culled, grads = run(1e-4)
    assert culled.samples_evaluated < 0.8 * exact.samples_evaluated
    # Depth is weighted by distances up to 2.1 along the ray, so it moves by up to twice as much.
    for name, bound in (("image", 1e-4), ("alpha", 1e-4), ("normal", 1e-4), ("depth", 2.1e-4)):
        torch.testing.assert_close(getattr(culled, name), getattr(exact, name), atol=bound, rtol=0)
    # A hidden sample's weight, under 1e-4, moves with the optical depth in front of it, which a
    # change of the radius shifts tens of times as much: its share of a gradient reaches 0.1-0.5%.
    for name, reference in exact_grads.items():
        assert reference.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], reference, atol=5e-3 * float(reference.abs().max()), rtol=0)
    render_cfg = dataclasses.replace(cfg(stratified=False), min_transmittance=1e-4)
    with torch.no_grad():
        preview = render(sphere, background, cameras, "lambertian", render_cfg, SHADING)
    assert preview.samples_evaluated == exact.samples_evaluated


def test_render_through_an_updated_grid_is_close_to_the_render_without():
    # One jittered reading per cell and update can miss the steep side of a cell on the surface
    # (density here varies e^8.7-fold across a 0.05 cell), so the match is looser than above.
    sphere = MovableSphere()
    plain, plain_grads = _loss_and_grads(sphere, None)
    skipped, grads = _loss_and_grads(sphere, grid_of(sphere, threshold=1e-4, updates=3))
    assert skipped.samples_evaluated < 0.25 * plain.samples_evaluated
    for name in ("image", "alpha", "depth", "normal"):
        torch.testing.assert_close(getattr(skipped, name), getattr(plain, name), atol=2e-4, rtol=0)
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("with_grid", [True, False])
def test_evaluating_every_sample_and_zeroing_the_skipped_equals_gathering(monkeypatch, with_grid):
    """The CUDA path for mostly occupied grids (no host wait), forced here on the CPU: the same
    images, per-sample normals and gradients as evaluating only the kept samples."""
    import dreamfusion.render.renderer as renderer

    sphere = MovableSphere()
    grid = grid_of(sphere) if with_grid else None
    gathered, gathered_grads = _loss_and_grads(sphere, grid)
    monkeypatch.setattr(renderer, "_evaluate_all", lambda flat, occupancy: True)
    everything, grads = _loss_and_grads(sphere, grid)
    assert everything.samples_evaluated == 2 * RES * RES * SAMPLES
    assert gathered.samples_evaluated < (0.3 if with_grid else 1.01) * everything.samples_evaluated
    names = ("image", "alpha", "depth", "normal", "weights", "sample_normals")
    _assert_same_render(everything, grads, gathered, gathered_grads, names)


def test_the_grid_keeps_its_occupied_share_on_the_host_at_each_refresh():
    sphere = MovableSphere()
    grid = OccupancyGrid(BOUND, 32)
    assert grid.share == 1.0  # before the first reading every cell counts as occupied
    grid.update(sphere, torch.Generator().manual_seed(0))
    assert 0.0 < grid.share < 0.5
    assert grid.share == pytest.approx(float(grid.occupied_fraction()))


def test_chunked_render_through_a_grid_equals_unchunked():
    sphere = MovableSphere()
    grid = grid_of(sphere)
    whole, chunked = _render(sphere, grid), _render(sphere, grid, chunk_rays=37)
    for name in ("image", "alpha", "depth", "normal", "weights", "sample_normals"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-6, rtol=0)


def _samples(cameras):
    """Every sample of the render (bin centers), independently of the renderer: points, deltas."""
    origins, directions = (t.reshape(-1, 3) for t in generate_rays(cameras))
    near, far, hit = intersect_sphere(origins, directions, BOUND)
    t_mid, deltas = sample_along_rays(near, far, SAMPLES, stratified=False, generator=None)
    points = origins[:, None] + t_mid[..., None] * directions[:, None]
    return points.reshape(-1, 3), deltas.reshape(-1), hit


def test_skipped_samples_never_reach_the_field():
    sphere = MovableSphere()
    grid = grid_of(sphere)
    field = Recording(sphere)
    cameras = orbit_cameras(2, RES, elevation=20.0, distance=1.3)
    out = render(field, background, cameras, "lambertian", cfg(stratified=False), SHADING, occupancy=grid)
    seen = torch.cat(field.seen)
    points, deltas, _ = _samples(cameras)
    expected = points[(deltas > 0) & grid.occupied(points)]
    assert len(seen) == len(expected) == out.samples_evaluated < 0.3 * len(points)
    torch.testing.assert_close(seen, expected, atol=1e-6, rtol=0)


def test_rays_that_miss_the_sphere_never_reach_the_field():
    field = Recording(MovableSphere())
    cameras = orbit_cameras(1, RES, focal_multiplier=0.4)  # wide: the corners miss
    out = render(field, background, cameras, "albedo", cfg(stratified=False), SHADING)
    seen = torch.cat(field.seen)
    _, _, hit = _samples(cameras)
    assert 0 < hit.sum() < len(hit)
    assert len(seen) == int(hit.sum()) * SAMPLES == out.samples_evaluated
    assert (seen.norm(dim=-1) <= BOUND + 1e-5).all()


def test_a_render_where_nothing_is_kept_still_has_a_graph():
    sphere = MovableSphere()
    grid = grid_of(sphere)
    grid.mask.zero_()  # nothing occupied (update never leaves a grid so)
    out = _render(sphere, grid)
    assert out.samples_evaluated == 1  # one sample per chunk keeps the graph
    out.image.sum().backward()  # reaches the field instead of failing for want of a graph


def _grid_config(steps):
    cfg = tiny_config(steps=steps, checkpoint_every=100)
    # Threshold 5 sits inside the initial blob (10 exp(-r^2 / 2 sigma^2) + 0.7), so the grid skips
    # its outer shell from the first update on: the resume must restore a grid that matters.
    render_cfg = dataclasses.replace(
        cfg.render,
        occupancy_grid=True,
        occupancy_resolution=16,
        occupancy_threshold=5.0,
        occupancy_update_every=2,
        occupancy_warmup_steps=1,
    )
    return dataclasses.replace(
        cfg, render=render_cfg, shading=dataclasses.replace(cfg.shading, albedo_warmup_steps=3)
    )


def test_training_with_the_grid_skips_samples_and_resumes_to_the_bit(tmp_path):
    cfg = _grid_config(steps=7)
    straight = Trainer("a red sphere", cfg, tmp_path / "a", _backend(cfg))
    metrics = [straight.train_step() for _ in range(7)]
    assert metrics[0]["evaluated"] > 0.9 and metrics[0]["occupied"] == 1.0  # before the first update
    assert all(m["evaluated"] < 0.9 and m["occupied"] < 0.9 for m in metrics[1:])
    assert "occupancy" in straight.timings()

    first = Trainer("a red sphere", cfg, tmp_path / "b", _backend(cfg))
    for _ in range(4):  # stop between two updates (at steps 3 and 5)
        first.train_step()
    first.save()
    del first
    resumed = Trainer("a red sphere", cfg, tmp_path / "b", _backend(cfg), resume=True)
    assert resumed.step == 4
    resumed.train()

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(straight.occupancy.density, resumed.occupancy.density)
    assert torch.equal(straight.occupancy.mask, resumed.occupancy.mask)


class HollowCube(nn.Module):
    """A closed cube shell of side 0.7 and wall 0.1 at density 200 around a faint inside (density 2):
    what renders show of a solid cube whose inside SDS never reached."""

    bound_radius = BOUND

    def density(self, points):
        side = points.abs().amax(-1)
        return torch.where(side < 0.25, 2.0, torch.where(side < 0.35, 200.0, 0.0))


def test_interior_points_fall_in_the_hidden_inside_only_and_none_before_any_reading():
    grid = OccupancyGrid(BOUND, 32)
    assert grid.interior_points(100, depth=3.0) is None  # no readings yet: nothing is hidden
    grid.update(HollowCube(), torch.Generator().manual_seed(0))
    hidden = hidden_cells(grid.density, grid.cell_size, 3.0)
    # The wall puts optical depth 200 * 0.1 = 20 between the inside and every face.
    assert hidden.sum() > 0
    points = grid.interior_points(2000, depth=3.0, generator=torch.Generator().manual_seed(1))
    assert points.shape == (2000, 3)
    assert points.abs().amax(-1).max() < 0.35 + grid.cell_size  # inside the shell's outer face
    assert points.abs().amax(-1).min() < 0.05  # reaching the center, not only the wall
    # The same draw twice from the same generator state: the training's resume replays it.
    again = grid.interior_points(2000, depth=3.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(points, again)


def test_a_torus_hole_and_an_open_cup_have_no_interior_in_their_openings():
    ijk = torch.arange(32, dtype=torch.float32) - 15.5
    x, y, z = torch.meshgrid(ijk, ijk, ijk, indexing="ij")
    ring = ((x.square() + y.square()).sqrt() - 9.0).square() + z.square() < 16.0
    hidden = hidden_cells(ring.float() * 1e3, 0.05)
    assert hidden[14:18, 14:18, :].sum() == 0  # the hole is open along z
    assert hidden.sum() > 0  # the ring's core is hidden
    cup = (x.abs() < 10) & (y.abs() < 10) & (z > -10) & (z < 10)
    cup &= ~((x.abs() < 7) & (y.abs() < 7) & (z > -7))  # a box open at the top
    assert hidden_cells(cup.float() * 1e3, 0.05)[12:20, 12:20, 12:28].sum() == 0


def test_interior_loss_values_and_its_push_only_raises_density():
    density = torch.tensor([1.0, 10.0, 100.0, 1000.0], requires_grad=True)
    loss = interior_loss(density, target=100.0)
    expected = (math.log(100.0) + math.log(10.0)) / 4  # the two below the target, log shortfall
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert (density.grad[:2] < 0).all()  # gradient descent raises them
    assert (density.grad[2:] == 0).all()  # at or above the target: left alone
    assert interior_loss(torch.zeros(3), 10.0).isfinite()  # an empty cell does not give inf


def _interior_config(weight, start=0.0, ramp_steps=0):
    cfg = _grid_config(steps=12)
    reg = dataclasses.replace(
        cfg.regularizers,
        interior_weight=weight,
        interior_weight_start=start,
        interior_ramp_steps=ramp_steps,
        interior_density=500.0,
        interior_depth=1.0,
    )
    # A fast learning rate, so that a dozen steps move the inside measurably.
    return dataclasses.replace(cfg, regularizers=reg, optim=dataclasses.replace(cfg.optim, lr=0.1))


def test_training_with_the_interior_loss_raises_the_hidden_density_and_resumes_to_the_bit(tmp_path):
    center = torch.zeros(1, 3)
    runs = {}
    for name, args in (("off", (0.0,)), ("on", (10.0,)), ("ramp", (10.0, 0.0, 1000))):
        cfg = _interior_config(*args)
        trainer = Trainer("a red sphere", cfg, tmp_path / name, _backend(cfg))
        metrics = [read_metrics(trainer.train_step()) for _ in range(12)]
        runs[name] = (trainer, metrics)
    off, on = runs["off"], runs["on"]
    assert all(m["interior"] == 0 for m in off[1])
    assert on[1][0]["interior"] == 0  # before the first grid update nothing is known to be hidden
    assert on[1][-1]["interior"] > 0 and "interior" in on[0].timings()
    with torch.no_grad():
        densities = {name: run[0].field.density(center).item() for name, run in runs.items()}
    assert densities["on"] > 1.5 * densities["off"]
    # Ramped from 0 toward 10 over 1,000 steps, the weight is still about 0.1 at step 12.
    assert densities["off"] < densities["ramp"] < 0.5 * densities["on"]

    cfg = _interior_config(10.0)
    first = Trainer("a red sphere", cfg, tmp_path / "r", _backend(cfg))
    for _ in range(6):
        first.train_step()
    first.save()
    del first
    resumed = Trainer("a red sphere", cfg, tmp_path / "r", _backend(cfg), resume=True)
    resumed.train()
    a, b = _state(on[0]), _state(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_interior_loss_without_the_grid_is_refused_in_one_line(tmp_path):
    cfg = _interior_config(1.0)
    cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, occupancy_grid=False))
    with pytest.raises(UserError, match="occupancy-grid") as info:
        Trainer("a red sphere", cfg, tmp_path / "x", _backend(cfg))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()
