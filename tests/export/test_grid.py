"""The density grid sampled exactly only near the surface matches the fully sampled one where it matters."""

import numpy as np
import pytest
import torch

from dreamfusion.export import auto_level, extract_surface, sample_density, sample_density_near_surface
from dreamfusion.export.grid import _upsample, _upsample_log
from dreamfusion.fields import SphereField

from .test_export import BOUND, COLOR, RADIUS, Ellipsoid, SphereWithFloater


@pytest.mark.parametrize(
    "field", [SphereField(RADIUS, COLOR, BOUND), SphereWithFloater(RADIUS, COLOR, BOUND)]
)
def test_refined_grid_gives_the_same_surface_at_a_manual_level(field):
    dense = sample_density(field, 65)
    sparse, level = sample_density_near_surface(field, 65, level=50.0, stride=4)
    assert level.rule == "manual" and level.value == 50.0
    # Every vertex of a cell the level crosses was queried exactly: the same marching-cubes mesh.
    a, b = extract_surface(dense, 50.0), extract_surface(sparse, 50.0)
    assert len(a.faces) == len(b.faces) > 1000
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-5)
    # Far from the surface the grid is interpolated, not queried: it differs somewhere.
    assert not torch.equal(dense.values, sparse.values)


def test_refined_grid_places_the_automatic_level_like_the_full_grid():
    field = Ellipsoid(0.49, COLOR, BOUND)
    dense = sample_density(field, 97)
    sparse, level = sample_density_near_surface(field, 97, stride=4)
    full = auto_level(dense)
    assert level.rule == full.rule == "transmittance"
    assert level.value == pytest.approx(full.value, rel=0.005)
    assert extract_surface(sparse, level.value).volume == pytest.approx(
        extract_surface(dense, full.value).volume, rel=0.01
    )


def test_stride_one_and_small_grids_query_every_vertex():
    field = SphereField(RADIUS, COLOR, BOUND)
    for resolution, stride in ((40, 1), (12, 4)):
        sparse, _ = sample_density_near_surface(field, resolution, level=50.0, stride=stride)
        assert torch.equal(sparse.values, sample_density(field, resolution).values)


class SphereWithRod(SphereField):
    """The sphere plus a rod of radius 0.012 along +x out to 0.75: thinner than a coarse cell
    (4 x 0.025 at 65^3), touching the sphere."""

    def density(self, points):
        x, r = points[:, 0], points[:, 1:].norm(dim=-1)
        rod = torch.minimum(0.012 - r, torch.minimum(x, 0.75 - x))
        return torch.maximum(
            super().density(points), self.peak_density * torch.sigmoid(self.sharpness * rod * 4)
        )


def _crossed_vertices(values, level):
    """(R, R, R) bool: every corner of every cell whose corners lie on both sides of the level."""
    above = values > level
    r = values.shape[0]
    corners = [
        above[i : r - 1 + i, j : r - 1 + j, k : r - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)
    ]
    crossed = torch.stack(corners).any(0) & ~torch.stack(corners).all(0)
    out = torch.zeros_like(above)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                out[i : r - 1 + i, j : r - 1 + j, k : r - 1 + k] |= crossed
    return out


@pytest.mark.parametrize(
    "field",
    [
        SphereWithFloater(RADIUS, COLOR, BOUND),
        SphereWithRod(RADIUS, COLOR, BOUND),
        Ellipsoid(0.49, COLOR, BOUND),
    ],
)
@pytest.mark.parametrize("manual", [50.0, None])
def test_traced_grid_holds_the_full_grids_values_wherever_the_level_crosses(field, manual):
    """Marching cubes reads only the corners of crossed cells: each is the full grid's value, thin
    rod included (no coarse sample lies in it; the trace follows the surface along it)."""
    dense = sample_density(field, 65)
    sparse, level = sample_density_near_surface(field, 65, level=manual, stride=4)
    needed = _crossed_vertices(dense.values, level.value)
    assert needed.sum() > 1000
    # The same points as the full grid's (a last-bit difference comes from the batch's shape).
    torch.testing.assert_close(sparse.values[needed], dense.values[needed], rtol=1e-6, atol=0.0)
    a, b = extract_surface(dense, level.value), extract_surface(sparse, level.value)
    assert len(a.faces) == len(b.faces)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-5)


def test_the_rod_reaches_its_end():
    sparse, level = sample_density_near_surface(SphereWithRod(RADIUS, COLOR, BOUND), 65, level=50.0, stride=4)
    assert extract_surface(sparse, level.value).vertices[:, 0].max() > 0.72


def test_upsample_is_trilinear_and_keeps_the_samples():
    index = torch.tensor([0, 4, 8, 10])  # a shorter last cell, as when the stride does not divide R - 1
    coarse = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(0))
    fine = _upsample(coarse, index, 11)
    assert torch.equal(fine[index[:, None, None], index[None, :, None], index[None, None, :]], coarse)
    # Separable linear interpolation, axis by axis, with numpy.
    expected = coarse.numpy()
    for axis in range(3):
        expected = np.apply_along_axis(lambda v: np.interp(np.arange(11), index.numpy(), v), axis, expected)
    np.testing.assert_allclose(fine.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_log_upsample_follows_an_exponential_falloff_and_keeps_empty_space_empty():
    index = torch.tensor([0, 4, 8, 12, 16])
    axis = torch.arange(17.0)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    density = 300.0 * torch.exp(-0.4 * x + 0.1 * y - 0.25 * z)
    coarse = density[index[:, None, None], index[None, :, None], index[None, None, :]]
    torch.testing.assert_close(_upsample_log(coarse, index, 17), density, rtol=1e-4, atol=0.0)
    assert _upsample(coarse, index, 17)[2, 2, 2] > 1.1 * density[2, 2, 2]  # linear overshoots
    empty = torch.zeros(5, 5, 5)
    empty[0, 0, 0] = 1.0  # one dense sample in a corner: space beyond its cell stays exactly 0
    fine = _upsample_log(empty, index, 17)
    assert fine[0, 0, 0] == 1.0 and fine[2, 2, 2] > 0.0 and (fine[4:, :, :] == 0.0).all()
