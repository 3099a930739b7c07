"""Fields and backgrounds: shapes, ranges, the bound mask, the init blob, derivatives, the hash grid."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dreamfusion.config import BackgroundConfig, FieldConfig
from dreamfusion.fields import (
    ConstantBackground,
    EnvMapBackground,
    SphereField,
    build_background,
    build_field,
    positional_encoding,
)
from dreamfusion.fields.base import activate_density
from dreamfusion.fields.hashgrid import (
    HASH_PRIMES,
    HashEncoding,
    grid_resolutions,
    is_hashed,
    trilinear_corners,
)


def small_config(kind: str, **overrides) -> FieldConfig:
    """Tiny fields: resolutions 4, 8 (dense: 125 and 729 vertices) and 16, 32 (hashed into 4096)."""
    base = dict(
        kind=kind,
        mlp_width=32,
        mlp_depth=4,
        pe_frequencies=4,
        hash_levels=4,
        hash_log2_size=12,
        hash_base_resolution=4,
        hash_max_resolution=32,
        hash_mlp_width=16,
        hash_mlp_depth=1,
    )
    base.update(overrides)
    return FieldConfig(**base)


def random_directions(n: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, 3, generator=gen), dim=-1)


KINDS = ["mlp", "hashgrid"]


# ------------------------------------------------------------------------------- both fields
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_ranges(kind):
    torch.manual_seed(0)
    cfg = small_config(kind)
    field = build_field(cfg)
    assert field.bound_radius == cfg.bound_radius
    gen = torch.Generator().manual_seed(1)
    points = (torch.rand(500, 3, generator=gen) * 2 - 1) * 1.2 * cfg.bound_radius
    density, albedo = field(points)
    assert density.shape == (500,) and albedo.shape == (500, 3)
    assert (density >= 0).all() and torch.isfinite(density).all()
    assert (albedo >= 0).all() and (albedo <= 1).all()
    torch.testing.assert_close(field.density(points), density)


@pytest.mark.parametrize("kind", KINDS)
def test_density_exactly_zero_outside_bound(kind):
    torch.manual_seed(0)
    cfg = small_config(kind, blob_radius=5.0)  # a wide blob: the mask, not the blob, must do the zeroing
    field = build_field(cfg)
    dirs = random_directions(200, torch.Generator().manual_seed(2))
    for scale in (1.001, 1.5, 3.0):
        assert (field.density(dirs * cfg.bound_radius * scale) == 0).all()
    assert (field.density(dirs * cfg.bound_radius * 0.999) > 1.0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "activation, blob_density, blob_radius, bound_radius, bias",
    # softplus as in stable-dreamfusion, the paper's exp, and exp with its empty space biased down
    [("softplus", 10.0, 0.5, 0.8, 0.0), ("exp", 5.0, 0.2, 1.4, 0.0), ("exp", 8.0, 0.2, 0.8, -3.0)],
)
def test_init_is_the_blob(kind, activation, blob_density, blob_radius, bound_radius, bias):
    torch.manual_seed(0)
    cfg = small_config(
        kind,
        density_activation=activation,
        blob_density=blob_density,
        blob_radius=blob_radius,
        bound_radius=bound_radius,
        density_bias=bias,
    )
    field = build_field(cfg)
    r = 0.7 * bound_radius
    points = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0], [0.0, -r, 0.0], [0.0, 0.0, r]])
    blob = torch.tensor([blob_density] + 3 * [blob_density * math.exp(-(r**2) / (2 * blob_radius**2))])
    expected = activate_density(blob + bias, activation)
    # The network adds a raw value of about 1e-2 at most at init: the density is the blob's.
    density = field.density(points)
    torch.testing.assert_close(density, expected, rtol=0.03, atol=0.0)
    assert density[0] > 1.8 * density[1:].max()


@pytest.mark.parametrize("kind", KINDS)
def test_first_and_second_derivatives(kind):
    torch.manual_seed(0)
    field = build_field(small_config(kind))
    gen = torch.Generator().manual_seed(3)
    points = (torch.rand(256, 3, generator=gen) * 2 - 1) * 0.5
    points.requires_grad_(True)
    density = field.density(points)
    (grad,) = torch.autograd.grad(density.sum(), points, create_graph=True)
    assert torch.isfinite(grad).all() and (grad.norm(dim=-1) > 0).all()
    # As the orientation loss does: a loss on the normals, back-propagated into the parameters.
    normals = -F.normalize(grad, dim=-1)
    (normals * torch.tensor([1.0, 0.5, 0.25])).sum().backward(retain_graph=True)
    # Every parameter but the albedo head's shapes the density.
    grads = {name: p.grad for name, p in field.named_parameters() if not name.startswith("albedo_head")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0
    if kind == "hashgrid":  # the tables themselves see the normals' gradient
        assert any(g.abs().sum() > 0 for name, g in grads.items() if "tables" in name)
    # Second derivative with respect to the points too (the normals vary in space).
    (hess_row,) = torch.autograd.grad(grad[:, 0].sum(), points)
    assert torch.isfinite(hess_row).all() and hess_row.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_init(kind):
    cfg = small_config(kind)
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        states.append(build_field(cfg).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_build_field_unknown_kind():
    with pytest.raises(ValueError, match="mlp, hashgrid"):
        build_field(FieldConfig(kind="voxels"))  # type: ignore[arg-type]


def test_positional_encoding_layout():
    x = torch.tensor([[0.5, -1.0]])
    enc = positional_encoding(x, 2)
    expected = [0.5, -1.0]
    expected += [math.sin(0.5), math.sin(-1.0), math.sin(1.0), math.sin(-2.0)]
    expected += [math.cos(0.5), math.cos(-1.0), math.cos(1.0), math.cos(-2.0)]
    torch.testing.assert_close(enc, torch.tensor([expected]))
    assert positional_encoding(torch.zeros(4, 5, 3), 3).shape == (4, 5, 21)


# ---------------------------------------------------------------------------------- hash grid
def test_grid_resolutions():
    assert grid_resolutions(4, 32, 4) == [4, 8, 16, 32]
    res = grid_resolutions(16, 1024, 16)
    assert res[0] == 16 and res[-1] == 1024 and res == sorted(set(res))
    assert grid_resolutions(16, 16, 1) == [16]


def test_dense_or_hashed_levels():
    assert not is_hashed(15, 4096)  # 16^3 = 4096 vertices fit exactly
    assert is_hashed(16, 4096)
    encoding = HashEncoding(levels=4, features=2, log2_size=12, base=4, finest=32)
    assert [t.shape[0] for t in encoding.tables] == [125, 729, 4096, 4096]
    assert encoding.out_dim == 8


def test_trilinear_weights_sum_to_one():
    points = torch.rand(1000, 3, generator=torch.Generator().manual_seed(4))
    for resolution in (4, 16):
        _, weights = trilinear_corners(points, [resolution], 4096)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(1000, 1))


def vertex_row(vertex: tuple[int, int, int], resolution: int, table_size: int) -> int:
    """The table row of a grid vertex, by the definition (dense strides or the XOR hash)."""
    i, j, k = vertex
    if is_hashed(resolution, table_size):
        return (i * HASH_PRIMES[0] ^ j * HASH_PRIMES[1] ^ k * HASH_PRIMES[2]) % table_size
    side = resolution + 1
    return i + side * j + side * side * k


@pytest.mark.parametrize("resolution", [8, 16])  # dense, hashed
def test_interpolation_on_vertices_and_edges(resolution):
    table_size = 4096
    encoding = HashEncoding(levels=1, features=2, log2_size=12, base=resolution, finest=resolution)
    with torch.no_grad():
        encoding.tables[0].copy_(
            torch.randn(encoding.tables[0].shape, generator=torch.Generator().manual_seed(5))
        )
    table = encoding.tables[0].detach()

    def feature(v):
        return table[vertex_row(v, resolution, table_size)]

    a, b = (3, 5, 2), (4, 5, 2)  # the two ends of an edge along x
    top = (resolution, resolution, resolution)  # the far corner: its cell is the last one
    points = torch.tensor([a, b, top], dtype=torch.float32) / resolution
    midpoint = (points[0] + points[1]) / 2
    out = encoding(torch.cat([points, midpoint[None]])).detach()
    torch.testing.assert_close(out[0], feature(a))
    torch.testing.assert_close(out[1], feature(b))
    torch.testing.assert_close(out[2], feature(top))
    torch.testing.assert_close(out[3], (feature(a) + feature(b)) / 2)


def test_dense_level_reproduces_linear_functions():
    """Trilinear interpolation of vertex values v -> c . v + d is exact at every point."""
    resolution = 8
    encoding = HashEncoding(levels=1, features=1, log2_size=12, base=resolution, finest=resolution)
    side = resolution + 1
    row = torch.arange(side**3)
    vertex = torch.stack([row % side, (row // side) % side, row // (side * side)], -1).float()
    c, d = torch.tensor([0.3, -1.2, 2.0]), 0.7
    with torch.no_grad():
        encoding.tables[0].copy_((vertex @ c + d)[:, None])
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(encoding(points)[:, 0], points * resolution @ c + d, rtol=1e-5, atol=1e-4)


def test_hashed_indices_stay_in_range_and_collide():
    table_size, resolution = 4096, 64  # 65^3 vertices into 4096 rows
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(7))
    index, _ = trilinear_corners(points, [resolution], table_size)
    assert index.dtype == torch.int32
    assert index.min() >= 0 and index.max() < table_size
    lower = (points * resolution).floor().long()
    distinct_vertices = torch.unique(lower, dim=0).shape[0]  # a lower bound on vertices touched
    assert torch.unique(index).numel() < distinct_vertices  # so at least two share a row
    # Dense levels index the (r+1)^3 array and never collide.
    index, _ = trilinear_corners(points, [8], table_size)
    assert index.min() >= 0 and index.max() < 9**3


@pytest.mark.parametrize(
    ("resolutions", "log2_size"), [((4, 8, 16, 64), 12), ((16, 256, 1024), 19)]
)  # dense and hashed levels; the finest has coordinates whose prime products need 64 bits
def test_corner_rows_are_the_definitions(resolutions, log2_size):
    """Every level's 8 rows are the dense stride sum or the XOR hash of the cell's corners, worked
    out here in Python's integers, and the weights are the trilinear ones."""
    table_size = 2**log2_size
    points = torch.rand(200, 3, generator=torch.Generator().manual_seed(11))
    points[:8] = torch.tensor([[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)])
    index, weights = trilinear_corners(points, list(resolutions), table_size)
    assert index.shape == weights.shape == (200, len(resolutions), 8)
    for level, resolution in enumerate(resolutions):
        pos = points.double() * resolution
        lower = pos.floor().clamp(0, resolution - 1)
        frac = (pos - lower).tolist()
        for n, cell in enumerate(lower.long().tolist()):
            for k, (dx, dy, dz) in enumerate((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)):
                vertex = (cell[0] + dx, cell[1] + dy, cell[2] + dz)
                assert int(index[n, level, k]) == vertex_row(vertex, resolution, table_size)
                fx, fy, fz = frac[n]
                expected = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * (fz if dz else 1 - fz)
                assert abs(float(weights[n, level, k]) - expected) < 1e-5


def test_hashgrid_far_outside_points_are_finite():
    torch.manual_seed(0)
    field = build_field(small_config("hashgrid"))
    points = torch.tensor([[10.0, -10.0, 3.0], [-0.8, 0.8, 0.8]], requires_grad=True)
    density, albedo = field(points)
    (grad,) = torch.autograd.grad(density.sum() + albedo.sum(), points)
    assert (density == 0).all() and torch.isfinite(albedo).all() and torch.isfinite(grad).all()


# -------------------------------------------------------------------------------- backgrounds
def test_envmap_range_and_direction_dependence():
    torch.manual_seed(0)
    background = build_background(BackgroundConfig(kind="envmap", frequencies=2, width=8))
    assert isinstance(background, EnvMapBackground)
    dirs = random_directions(40, torch.Generator().manual_seed(8)).reshape(2, 4, 5, 3)
    colors = background(dirs)
    assert colors.shape == (2, 4, 5, 3)
    assert (colors >= 0).all() and (colors <= 1).all()
    flat = colors.reshape(-1, 3)
    assert (flat - flat[0]).abs().max() > 1e-4
    assert sum(p.numel() for p in background.parameters()) > 0


def test_constant_background():
    background = build_background(BackgroundConfig(kind="constant", color=(0.2, 0.4, 0.6)))
    assert isinstance(background, ConstantBackground)
    assert list(background.parameters()) == [] and background.state_dict() == {}
    dirs = torch.randn(3, 7, 3, dtype=torch.float64)
    colors = background(dirs)
    assert colors.shape == (3, 7, 3) and colors.dtype == torch.float64
    torch.testing.assert_close(colors, torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64).expand(3, 7, 3))


def test_build_background_unknown_kind():
    with pytest.raises(ValueError, match="envmap, constant"):
        build_background(BackgroundConfig(kind="skybox"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- sphere field
def test_sphere_field():
    field = SphereField(radius=0.45, color=(0.8, 0.2, 0.2), bound_radius=0.8)
    assert list(field.parameters()) == []
    dirs = random_directions(100, torch.Generator().manual_seed(9))
    center = field.density(torch.zeros(1, 3))
    assert center.item() == pytest.approx(field.peak_density, rel=1e-6)
    assert field.density(dirs * 0.3).min() > 0.99 * field.peak_density
    assert field.density(dirs * 1.5 * 0.45).max() < 1e-3
    assert (field.density(dirs * 0.81) == 0).all()
    _, albedo = field(dirs)
    torch.testing.assert_close(albedo, torch.tensor([0.8, 0.2, 0.2]).expand(100, 3))

    # Normals -grad(density) / |grad| point straight out of the sphere, near and off the surface.
    for r in (0.35, 0.45, 0.55):
        points = (dirs * r).requires_grad_(True)
        (grad,) = torch.autograd.grad(field.density(points).sum(), points)
        normals = -F.normalize(grad, dim=-1)
        assert torch.isfinite(normals).all()
        assert (normals * dirs).sum(-1).min() > 0.999


def test_hash_encoding_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hash_levels"):
        HashEncoding(levels=0, features=2, log2_size=12, base=4, finest=32)
    with pytest.raises(ValueError, match="below"):
        HashEncoding(levels=2, features=2, log2_size=12, base=64, finest=32)


def test_levels_gathered_together_equal_levels_one_by_one():
    """The GPU layout (all levels in one gather), levels gathered one by one or in pairs, and the
    CPU's training path (corner-major, `levels_per_gather` None) compute the same values and
    gradients (first and second order, as normals need), dense and hashed."""
    torch.manual_seed(3)
    encoding = HashEncoding(levels=5, features=2, log2_size=12, base=4, finest=64)  # 2 dense, 3 hashed
    with torch.no_grad():
        for table in encoding.tables:
            table.normal_()
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(9))

    def run(levels_per_gather):
        encoding.levels_per_gather = levels_per_gather
        encoding.zero_grad()
        p = points.clone().requires_grad_(True)
        out = encoding(p)
        (grad,) = torch.autograd.grad(out.square().sum(), p, create_graph=True)
        (grad.square().sum() + out.sum()).backward()
        return out.detach(), grad.detach(), [t.grad.clone() for t in encoding.tables], p.grad

    one_by_one, together, pairs, corner_major = run(1), run(5), run(2), run(None)
    for other in (together, pairs, corner_major):
        torch.testing.assert_close(other[0], one_by_one[0])
        torch.testing.assert_close(other[1], one_by_one[1], rtol=1e-4, atol=1e-4)  # sums in another order
        second = one_by_one[3]  # the points' second derivatives
        torch.testing.assert_close(other[3], second, rtol=1e-4, atol=1e-6 * float(second.abs().max()))
        for a, b in zip(other[2], one_by_one[2], strict=True):
            # Sums in another order: float32 rounding of the table's largest gradients (up to 1e6).
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("features", [1, 2, 3])
def test_no_grad_path_equals_the_autograd_forward(features, monkeypatch):
    """Without autograd a CPU encoding takes its inference path (a level at a time, corner-major,
    int32 rows): the autograd path's features to float rounding, on dense and hashed levels,
    the cube's corners and faces included."""
    torch.manual_seed(5)
    encoding = HashEncoding(levels=6, features=features, log2_size=12, base=4, finest=96)
    assert [is_hashed(r, 4096) for r in encoding.resolutions] == [False] * 3 + [True] * 3
    with torch.no_grad():
        for table in encoding.tables:
            table.normal_()
    points = torch.rand(3000, 3, generator=torch.Generator().manual_seed(6))
    points[:8] = torch.tensor([[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)])
    points[8:14] = points[8:14].index_fill(1, torch.tensor([0]), 1.0)
    reference = encoding(points)
    assert reference.requires_grad  # the autograd path
    import dreamfusion.fields.hashgrid as hashgrid

    def unused(*args, **kwargs):
        raise AssertionError("the no-grad path gathers without trilinear_corners")

    monkeypatch.setattr(hashgrid, "trilinear_corners", unused)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            fast = encoding(points)
        assert not fast.requires_grad
        torch.testing.assert_close(fast, reference.detach(), rtol=1e-6, atol=1e-6)


def test_hashgrid_field_without_autograd_equals_its_training_forward():
    """The default preset's field, tables drawn in +-1 (every level matters): density and albedo."""
    from dreamfusion.presets import default

    torch.manual_seed(7)
    field = build_field(default().field)
    with torch.no_grad():
        for table in field.encoding.tables:
            table.uniform_(-1.0, 1.0)
    points = (torch.rand(4000, 3, generator=torch.Generator().manual_seed(8)) * 2 - 1) * field.bound_radius
    density, albedo = field(points)
    with torch.no_grad():
        fast_density, fast_albedo = field(points)
        only_density = field.density(points)
    torch.testing.assert_close(fast_density, density.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_albedo, albedo.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(only_density, fast_density)


def test_hash_encoding_on_cuda_equals_cpu():
    """The CUDA layout (all levels in one gather, elementwise mixing) against the CPU one (a level
    at a time, bmm): values, the gradient w.r.t. points and the tables' gradients."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA layout is checked on the GPU machine")
    torch.manual_seed(4)
    cpu = HashEncoding(levels=5, features=2, log2_size=12, base=4, finest=64)
    with torch.no_grad():
        for table in cpu.tables:
            table.normal_()
    gpu = HashEncoding(levels=5, features=2, log2_size=12, base=4, finest=64).cuda()
    gpu.load_state_dict(cpu.state_dict())
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(9))
    results = []
    for encoding, device in ((cpu, "cpu"), (gpu, "cuda")):
        p = points.to(device).requires_grad_(True)
        out = encoding(p)
        (grad,) = torch.autograd.grad(out.square().sum(), p, create_graph=True)
        (grad.square().sum() + out.sum()).backward()
        results.append((out.detach().cpu(), grad.detach().cpu(), [t.grad.cpu() for t in encoding.tables]))
    (out_c, grad_c, tables_c), (out_g, grad_g, tables_g) = results
    torch.testing.assert_close(out_g, out_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_g, grad_c, rtol=1e-4, atol=1e-4)
    for a, b in zip(tables_g, tables_c, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_constant_background_is_its_color_and_saves_nothing():
    background = ConstantBackground((0.2, 0.4, 0.6))
    assert background.state_dict() == {}  # checkpoints of a constant background stay empty
    directions = torch.randn(2, 5, 3, dtype=torch.float64)
    colors = background(directions)
    assert colors.shape == (2, 5, 3) and colors.dtype == torch.float64
    expected = torch.tensor([0.2, 0.4, 0.6]).to(torch.float64)  # the color as float32, as renders use it
    assert torch.equal(colors, expected.expand(2, 5, 3))
