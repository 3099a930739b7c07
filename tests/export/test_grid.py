"""The density grid sampled exactly only near the surface matches the fully sampled one where it matters."""

import numpy as np
import pytest
import torch

from dreamfusion.export import auto_level, extract_surface, sample_density, sample_density_near_surface
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
    assert level.value == pytest.approx(full.value, rel=0.02)
    assert extract_surface(sparse, level.value).volume == pytest.approx(
        extract_surface(dense, full.value).volume, rel=0.01
    )


def test_stride_one_and_small_grids_query_every_vertex():
    field = SphereField(RADIUS, COLOR, BOUND)
    for resolution, stride in ((40, 1), (12, 4)):
        sparse, _ = sample_density_near_surface(field, resolution, level=50.0, stride=stride)
        assert torch.equal(sparse.values, sample_density(field, resolution).values)
