"""Camera and light sampling ranges, and the paper's view-prompt rule."""

import pytest
import torch

from dreamfusion.config import CameraConfig
from dreamfusion.scene.cameras import orbit_cameras, sample_cameras
from dreamfusion.scene.prompts import ALL_VIEWS, VIEWS, view_index, view_prompts


def _sample(n=4000, **kw):
    return sample_cameras(n, CameraConfig(**kw), torch.Generator().manual_seed(0))


def test_ranges_follow_the_config():
    cfg = CameraConfig()
    cams = _sample()
    assert cams.elevation.min() >= cfg.elevation_range[0] and cams.elevation.max() <= cfg.elevation_range[1]
    assert cams.azimuth.min() >= -180.0 and cams.azimuth.max() < 180.0
    assert cams.distance.min() >= 1.0 and cams.distance.max() <= 1.5
    focal_mult = cams.focal / cfg.resolution
    assert focal_mult.min() >= 0.7 and focal_mult.max() <= 1.35
    # Every quadrant of azimuth and both ends of elevation are visited.
    assert (cams.elevation < 0).any() and (cams.elevation > 80).any()
    for lo in (-180, -90, 0, 90):
        assert ((cams.azimuth >= lo) & (cams.azimuth < lo + 90)).any()


def test_positions_match_spherical_coordinates_and_look_at_the_origin():
    cams = _sample(256, lookat_jitter=0.0, up_jitter=0.0)
    el, az = torch.deg2rad(cams.elevation), torch.deg2rad(cams.azimuth)
    expected = cams.distance[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1
    )
    torch.testing.assert_close(cams.position, expected, atol=1e-5, rtol=1e-5)
    rot = cams.c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand_as(rot), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(256), atol=1e-5)
    forward = -rot[:, :, 2]
    torch.testing.assert_close(
        forward, -torch.nn.functional.normalize(cams.position, dim=-1), atol=1e-5, rtol=0
    )
    # Image up points toward +z for every camera that is not straight overhead.
    low = cams.elevation < 80
    assert (rot[low, 2, 1] > 0).all()


def test_overhead_cameras_are_well_defined():
    cams = _sample(64, elevation_range=(90.0, 90.0))
    assert torch.isfinite(cams.c2w).all()
    rot = cams.c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand_as(rot), atol=1e-4, rtol=0)


def test_jitter_moves_the_look_at_point_a_little():
    cams = _sample(512, lookat_jitter=0.05)
    forward = -cams.c2w[:, :3, 2]
    # Distance from the origin to each optical axis: small but not zero.
    p = cams.position
    miss = torch.linalg.norm(p - (p * forward).sum(-1, keepdim=True) * forward, dim=-1)
    assert miss.max() < 0.3 and miss.mean() > 0.01


def test_uniform_on_sphere_fraction():
    on_sphere = _sample(20000, uniform_sphere_fraction=1.0, elevation_range=(-90.0, 90.0))
    s = torch.sin(torch.deg2rad(on_sphere.elevation))
    assert abs(float(s.mean())) < 0.02 and abs(float((s < 0.5).float().mean()) - 0.75) < 0.02
    in_angle = _sample(20000, uniform_sphere_fraction=0.0, elevation_range=(-90.0, 90.0))
    assert abs(float((in_angle.elevation < 30).float().mean()) - 2 / 3) < 0.02


def test_lights_sit_around_the_camera():
    cams = _sample(2000)
    d = torch.linalg.norm(cams.light_position, dim=-1)
    assert d.min() >= 0.8 - 1e-5 and d.max() <= 1.5 + 1e-5
    aligned = _sample(200, light_jitter=0.0)
    cos = torch.nn.functional.cosine_similarity(aligned.light_position, aligned.position, dim=-1)
    assert torch.allclose(cos, torch.ones(200), atol=1e-5)


def test_sampling_is_seeded():
    a = sample_cameras(8, CameraConfig(), torch.Generator().manual_seed(3))
    b = sample_cameras(8, CameraConfig(), torch.Generator().manual_seed(3))
    c = sample_cameras(8, CameraConfig(), torch.Generator().manual_seed(4))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.light_position, b.light_position)
    assert not torch.equal(a.c2w, c.c2w)


def test_front_camera_sits_on_plus_x():
    cams = orbit_cameras(4, 16, elevation=0.0, distance=2.0)
    torch.testing.assert_close(cams.position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.position[1], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6, rtol=0)
    assert cams.focal[0] == 16


@pytest.mark.parametrize(
    "elevation, azimuth, view",
    [
        (0.0, 0.0, "front"),
        (30.0, 44.9, "front"),
        (30.0, -44.9, "front"),
        (30.0, 45.1, "side"),
        (10.0, 90.0, "side"),
        (10.0, -90.0, "side"),
        (10.0, 134.9, "side"),
        (10.0, 135.1, "back"),
        (-10.0, 180.0, "back"),
        (10.0, -170.0, "back"),
        (60.0, 0.0, "front"),
        (60.1, 0.0, "overhead"),
        (89.0, 180.0, "overhead"),
        (0.0, 360.0, "front"),
        (0.0, 300.0, "side"),
    ],
)
def test_view_rule(elevation, azimuth, view):
    index = view_index(torch.tensor([elevation]), torch.tensor([azimuth]))
    assert VIEWS[int(index)] == view


def test_bottom_view_only_when_asked():
    el, az = torch.tensor([-30.0, -30.0, -10.0]), torch.tensor([0.0, 180.0, 0.0])
    assert [ALL_VIEWS[i] for i in view_index(el, az)] == ["front", "back", "front"]
    assert [ALL_VIEWS[i] for i in view_index(el, az, bottom_below=-20.0)] == ["bottom", "bottom", "front"]
    assert view_prompts("a cube", bottom=True)[-1] == "a cube, bottom view"


def test_view_prompts_append_the_suffix():
    assert view_prompts("a red cube") == [
        "a red cube, front view",
        "a red cube, side view",
        "a red cube, back view",
        "a red cube, overhead view",
    ]
