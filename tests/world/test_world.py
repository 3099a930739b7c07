"""The procedural world: exact SDFs and sizes, composites and their fronts, captions, renderer, dataset."""

import dataclasses
import math

import pytest
import torch

from dreamfusion.config import CameraConfig
from dreamfusion.scene.cameras import Cameras, orbit_cameras
from dreamfusion.world import (
    COLOR_NAMES,
    COLORS,
    COMPOSITES,
    FRONTED,
    NOUNS,
    OBJECTS,
    PRIMITIVE_VOLUMES,
    PRIMITIVES,
    SHAPE_NAMES,
    WORLD_VIEWS,
    WorldConfig,
    caption,
    render_object,
    sample_backgrounds,
    sample_batch,
    sdf_normals,
    sphere_trace,
    vocabulary,
    with_view,
    world_view_index,
)
from dreamfusion.world.colors import CARROT, COAL, CREAM, DARK_WOOD
from dreamfusion.world.sdf import cone, cut_sphere, pyramid
from dreamfusion.world.table import PartTable

S2 = math.sqrt(2.0)
S3 = math.sqrt(3.0)
# Unit outward normals of the cone's slanted side and the pyramid's +x face, in the xz-plane.
CONE_N = (0.8 / math.hypot(0.8, 0.4), 0.4 / math.hypot(0.8, 0.4))
PYR_N = (0.75 / math.hypot(0.75, 0.35), 0.35 / math.hypot(0.75, 0.35))

# (object, point, hand-computed signed distance)
KNOWN_POINTS = [
    ("cube", (0.35, 0.0, 0.0), 0.0),  # face center
    ("cube", (0.0, 0.0, 0.0), -0.35),
    ("cube", (0.5, 0.0, 0.0), 0.15),
    ("cube", (0.45, 0.45, 0.45), 0.1 * S3),  # nearest point is the corner
    ("cube", (0.35, 0.35, 0.35), 0.0),
    ("sphere", (0.0, 0.0, 0.0), -0.45),
    ("sphere", (0.0, 0.0, -0.45), 0.0),
    ("sphere", (0.0, 0.6, 0.0), 0.15),
    ("cylinder", (0.3, 0.0, 0.0), 0.0),
    ("cylinder", (0.0, 0.0, 0.4), 0.0),
    ("cylinder", (0.0, 0.0, 0.0), -0.3),
    ("cylinder", (0.0, 0.0, 0.35), -0.05),
    ("cylinder", (0.4, 0.0, 0.5), 0.1 * S2),  # nearest point is the rim
    ("cone", (0.0, 0.0, 0.45), 0.0),  # apex
    ("cone", (0.0, 0.0, 0.55), 0.1),
    ("cone", (0.0, 0.0, -0.35), 0.0),  # base center
    ("cone", (0.0, 0.0, -0.45), 0.1),
    ("cone", (0.0, 0.0, -0.3), -0.05),
    ("cone", (0.2, 0.0, 0.05), 0.0),  # middle of the slanted side
    ("cone", (0.2 + 0.1 * CONE_N[0], 0.0, 0.05 + 0.1 * CONE_N[1]), 0.1),
    ("cone", (0.0, 0.5, -0.35), 0.1),  # beside the base rim
    ("torus", (0.0, 0.0, 0.0), 0.23),  # the hole's center is outside
    ("torus", (0.35, 0.0, 0.0), -0.12),  # center of the tube
    ("torus", (0.0, -0.47, 0.0), 0.0),
    ("torus", (0.35, 0.0, 0.12), 0.0),
    ("torus", (0.0, 0.0, 0.5), math.hypot(0.35, 0.5) - 0.12),
    ("pyramid", (0.0, 0.0, 0.4), 0.0),  # apex
    ("pyramid", (0.0, 0.0, 0.5), 0.1),
    ("pyramid", (0.0, 0.0, -0.35), 0.0),  # base center
    ("pyramid", (0.0, 0.0, -0.45), 0.1),
    ("pyramid", (0.0, 0.0, -0.3), -0.05),
    ("pyramid", (0.35, 0.35, -0.35), 0.0),  # base corner
    ("pyramid", (0.45, 0.45, -0.35), 0.1 * S2),
    ("pyramid", (0.175, 0.0, 0.025), 0.0),  # middle of the +x face's center line
    ("pyramid", (0.0, -0.175 - 0.1 * PYR_N[0], 0.025 + 0.1 * PYR_N[1]), 0.1),
    ("capsule", (0.0, 0.0, 0.52), 0.0),
    ("capsule", (0.22, 0.0, 0.0), 0.0),
    ("capsule", (0.0, 0.0, 0.0), -0.22),
    ("capsule", (0.3, 0.0, 0.4), math.hypot(0.3, 0.1) - 0.22),
]


COMPOSITE_POINTS = [
    ("mushroom", (0.0, 0.0, 0.23), 0.0),  # top of the cap
    ("mushroom", (0.36, 0.0, -0.05), 0.0),  # rim of the cap
    ("mushroom", (0.0, 0.0, -0.35), 0.0),  # bottom of the stem
    ("snowman", (0.0, 0.0, -0.55), 0.0),  # bottom of the lowest ball
    ("snowman", (0.3, 0.0, 0.33), 0.0),  # tip of the nose
    ("table", (0.0, 0.0, 0.15), 0.0),  # center of the top
    ("table", (0.0, 0.0, 0.0), 0.09),  # under the top, between the legs
]


@pytest.mark.parametrize("name,point,expected", KNOWN_POINTS + COMPOSITE_POINTS)
def test_primitive_sdf_at_hand_computed_points(name, point, expected):
    value = OBJECTS[name].sdf(torch.tensor([point], dtype=torch.float64))
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected, abs=1e-9)
    if expected != 0.0:  # on the surface, rounding decides
        assert bool(OBJECTS[name].occupancy(torch.tensor([point], dtype=torch.float64))) == (expected < 0)


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_primitive_sdfs_are_exact_distances(name):
    # An exact SDF has a unit gradient almost everywhere (a mere bound would be flatter).
    g = torch.Generator().manual_seed(1)
    points = ((torch.rand(2000, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.7).requires_grad_()
    (grad,) = torch.autograd.grad(OBJECTS[name].sdf(points).sum(), points)
    assert (grad.norm(dim=-1) - 1.0).abs().max() < 1e-6


def _cone_surface(n: int) -> torch.Tensor:
    h, a = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 2 * math.pi, 4 * n), indexing="ij")
    side = torch.stack([0.4 * (1 - h) * a.cos(), 0.4 * (1 - h) * a.sin(), -0.35 + 0.8 * h], -1)
    base = torch.stack([0.4 * h * a.cos(), 0.4 * h * a.sin(), torch.full_like(h, -0.35)], -1)
    return torch.cat([side.reshape(-1, 3), base.reshape(-1, 3)]).double()


def _pyramid_surface(n: int) -> torch.Tensor:
    u, v = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    keep = (u + v) <= 1.0
    u, v = u[keep], v[keep]
    corners = [(0.35, 0.35), (-0.35, 0.35), (-0.35, -0.35), (0.35, -0.35)]
    faces = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        a, b, c = torch.tensor([x0, y0, -0.35]), torch.tensor([x1, y1, -0.35]), torch.tensor([0.0, 0.0, 0.4])
        faces.append(a + u[:, None] * (b - a) + v[:, None] * (c - a))
    s = torch.linspace(-0.35, 0.35, n)
    bx, by = torch.meshgrid(s, s, indexing="ij")
    faces.append(torch.stack([bx, by, torch.full_like(bx, -0.35)], -1).reshape(-1, 3))
    return torch.cat(faces).double()


@pytest.mark.parametrize("name,surface", [("cone", _cone_surface), ("pyramid", _pyramid_surface)])
def test_cone_and_pyramid_match_brute_force_distance(name, surface):
    # Distance to a dense sampling of the surface is an upper bound within the sampling step.
    cloud = surface(160)
    g = torch.Generator().manual_seed(2)
    points = (torch.rand(300, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.7
    brute = torch.cdist(points, cloud).amin(dim=-1)
    exact = OBJECTS[name].sdf(points)
    assert (exact.abs() - brute).max() < 1e-6  # never farther than a real surface point
    assert (brute - exact.abs()).max() < 6e-3  # and within the sampling step of it


def test_cut_sphere_matches_brute_force_distance():
    # Radius 0.5 cut at z = 0.3: a dome of height 0.2 on a disk of radius 0.4.
    a, z = torch.meshgrid(torch.linspace(0, 2 * math.pi, 400), torch.linspace(0, 1, 200), indexing="ij")
    polar = torch.acos(torch.tensor(0.3 / 0.5)) * z  # from the pole down to the rim
    cap = 0.5 * torch.stack([polar.sin() * a.cos(), polar.sin() * a.sin(), polar.cos()], -1)
    disk = torch.stack([0.4 * z * a.cos(), 0.4 * z * a.sin(), torch.full_like(z, 0.3)], -1)
    cloud = torch.cat([cap.reshape(-1, 3), disk.reshape(-1, 3)]).double()
    g = torch.Generator().manual_seed(6)
    points = (torch.rand(300, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.7
    exact = cut_sphere(points, 0.5, 0.3)
    brute = torch.cdist(points, cloud).amin(dim=-1)
    assert (exact.abs() - brute).max() < 1e-6
    assert (brute - exact.abs()).max() < 6e-3
    known = [[0.0, 0.0, 0.5], [0.0, 0.0, 0.4], [0.0, 0.0, 0.0], [0.4, 0.0, 0.3], [0.6, 0.0, 0.3]]
    expected = [0.0, -0.1, 0.3, 0.0, 0.2]  # pole, inside, below the disk, rim, beside the rim
    known = torch.tensor(known, dtype=torch.float64)
    assert cut_sphere(known, 0.5, 0.3).tolist() == pytest.approx(expected, abs=1e-9)
    p = ((torch.rand(2000, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.7).requires_grad_()
    (grad,) = torch.autograd.grad(cut_sphere(p, 0.5, 0.3).sum(), p)
    assert (grad.norm(dim=-1) - 1.0).abs().max() < 1e-6


def test_part_table_matches_each_object():
    objects = tuple(OBJECTS.values())
    table = PartTable.from_objects(objects)
    g = torch.Generator().manual_seed(10)
    points = (torch.rand(3000, 3, generator=g) * 2 - 1) * 0.65
    which = torch.randint(len(objects), (3000,), generator=g)
    base = torch.rand(3000, 3, generator=g)
    distance = table.sdf(points, which)
    albedo = table.albedo(points, which, base)
    for i, obj in enumerate(objects):
        sel = which == i
        assert torch.allclose(distance[sel], obj.sdf(points[sel]), atol=1e-6), obj.name
        assert torch.allclose(albedo[sel], obj.albedo(points[sel], base[sel]), atol=1e-6), obj.name


def test_cone_and_pyramid_helpers_place_base_at_origin():
    p = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert cone(p, 0.4, 1.0).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    assert pyramid(p, 0.35, 1.0).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_monte_carlo_volume_matches_analytic(name):
    g = torch.Generator().manual_seed(3)
    half = 0.62  # every primitive lies inside [-0.62, 0.62]^3
    points = (torch.rand(300_000, 3, generator=g) * 2 - 1) * half
    volume = OBJECTS[name].occupancy(points).float().mean().item() * (2 * half) ** 3
    assert volume == pytest.approx(PRIMITIVE_VOLUMES[name], rel=0.05)


def test_analytic_volumes_written_out():
    assert PRIMITIVE_VOLUMES["cube"] == pytest.approx(0.343)
    assert PRIMITIVE_VOLUMES["sphere"] == pytest.approx(0.3817035)
    assert PRIMITIVE_VOLUMES["cylinder"] == pytest.approx(0.2261947)
    assert PRIMITIVE_VOLUMES["cone"] == pytest.approx(0.1340413)
    assert PRIMITIVE_VOLUMES["torus"] == pytest.approx(0.0994856)
    assert PRIMITIVE_VOLUMES["pyramid"] == pytest.approx(0.1225)
    assert PRIMITIVE_VOLUMES["capsule"] == pytest.approx(0.1358341)


def test_registry_has_enough_composites_and_fronts():
    assert len(COMPOSITES) >= 6
    assert len(FRONTED) >= 3
    assert {"snowman", "house", "chair"} <= set(FRONTED)
    assert SHAPE_NAMES == tuple(OBJECTS)
    assert set(NOUNS) == set(OBJECTS)


@pytest.mark.parametrize("name", list(OBJECTS))
def test_every_object_fits_in_radius_065_and_is_substantial(name):
    g = torch.Generator().manual_seed(4)
    shell = torch.nn.functional.normalize(torch.randn(20_000, 3, generator=g), dim=-1)
    obj = OBJECTS[name]
    for radius in (0.65, 0.7):
        assert (obj.sdf(shell * radius) > 0).all()
    volume_points = (torch.rand(100_000, 3, generator=g) * 2 - 1) * 0.65
    assert obj.occupancy(volume_points).float().mean() > 0.005


def _mirror_difference(name: str) -> float:
    """Share of points whose occupancy changes when x is mirrored."""
    g = torch.Generator().manual_seed(5)
    p = (torch.rand(50_000, 3, generator=g) * 2 - 1) * 0.6
    mirrored = p * torch.tensor([-1.0, 1.0, 1.0])
    obj = OBJECTS[name]
    return (obj.occupancy(p) != obj.occupancy(mirrored)).float().mean().item()


@pytest.mark.parametrize("name", FRONTED)
def test_fronted_objects_are_asymmetric_in_x(name):
    x, y, z = OBJECTS[name].front_marker
    assert OBJECTS[name].occupancy(torch.tensor([[x, y, z], [-x, y, z]])).tolist() == [True, False]
    assert _mirror_difference(name) > 1e-4  # the snowman's nose is small: 0.3% of its volume


@pytest.mark.parametrize("name", [n for n in OBJECTS if n not in FRONTED])
def test_objects_without_a_front_are_mirror_symmetric_in_x(name):
    assert _mirror_difference(name) == 0.0


def test_snowman_nose_points_forward_and_is_orange():
    snowman = OBJECTS["snowman"]
    tip_region = torch.tensor([[0.28, 0.0, 0.33], [-0.28, 0.0, 0.33], [0.31, 0.0, 0.33]])
    assert snowman.occupancy(tip_region).tolist() == [True, False, False]
    red = snowman.with_color("red")
    albedo = red.albedo(torch.tensor([[0.25, 0.0, 0.33], [0.0, 0.0, -0.55], [0.125, 0.05, 0.38]]))
    assert albedo.tolist() == [list(map(pytest.approx, c)) for c in (CARROT, COLORS["red"], COAL)]


def test_albedo_takes_a_per_point_color():
    cube = OBJECTS["cube"]
    colors = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    assert torch.equal(cube.albedo(torch.zeros(2, 3), colors), colors)
    assert cube.albedo(torch.zeros(1, 3)).tolist() == [list(map(pytest.approx, COLORS["white"]))]


def test_house_door_gable_and_chair_back():
    house, chair = OBJECTS["house"], OBJECTS["chair"]
    door, frame, back = house.albedo(
        torch.tensor([[0.335, 0.0, -0.2], [0.33, 0.075, -0.2], [-0.31, 0.0, -0.2]])
    )
    assert door.tolist() == list(map(pytest.approx, DARK_WOOD))
    assert frame.tolist() == list(map(pytest.approx, CREAM))
    assert back.tolist() == list(map(pytest.approx, COLORS["red"]))
    # Deeper than wide, ridge along x: a quarter turn changes the silhouette, not only the door.
    assert house.occupancy(torch.tensor([[0.3, 0.0, -0.1], [0.0, 0.3, -0.1], [0.25, 0.0, 0.2]])).tolist() == [
        True,
        False,
        True,
    ]
    assert chair.occupancy(torch.tensor([[-0.19, 0.0, 0.3], [0.19, 0.0, 0.3]])).tolist() == [True, False]


def test_color_table():
    rgb = torch.tensor(list(COLORS.values()))
    assert len(COLORS) >= 8 and COLOR_NAMES == tuple(COLORS)
    assert ((rgb >= 0) & (rgb <= 1)).all()
    pairwise = (rgb[:, None] - rgb[None]).abs().amax(-1) + torch.eye(len(rgb))
    assert pairwise.min() > 0.15  # every two colors differ clearly in some channel


def test_grammar_and_synonyms():
    assert caption("cube", "red") == "a red cube"
    assert caption("cube", "red", template=1) == "a photo of a red cube"
    assert caption("cube", "red", template=4, synonym=1) == "red box"
    assert caption("torus", "orange", template=1, synonym=1) == "a photo of an orange donut"
    assert caption("sphere", "blue", synonym=1) == "a blue ball"
    assert with_view("a red cube", "bottom") == "a red cube, bottom view"
    with pytest.raises(KeyError, match="known"):
        caption("teapot", "red")
    with pytest.raises(KeyError, match="known"):
        caption("cube", "teal")
    words = vocabulary()
    assert {"a", "an", "photo", "of", "red", "cube", "box", "front", "bottom", "view"} <= set(words)
    assert list(words) == sorted(set(words))


def test_view_suffix_follows_the_camera():
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0, -30.0, -10.0, -19.0, 61.0])
    azimuth = torch.tensor([0.0, 90.0, 180.0, -40.0, 180.0, 0.0, 170.0, -90.0, -90.0])
    views = [WORLD_VIEWS[i] for i in world_view_index(elevation, azimuth).tolist()]
    assert views == ["front", "side", "back", "front", "overhead", "bottom", "back", "side", "overhead"]
    below = world_view_index(torch.tensor([-30.0]), torch.tensor([0.0]), bottom_below=-40.0)
    assert WORLD_VIEWS[int(below)] == "front"


def _camera_on_x(resolution: int, light: tuple[float, float, float]) -> Cameras:
    """One camera at (1.5, 0, 0) looking at the origin; an odd resolution puts a ray on the axis."""
    cams = orbit_cameras(1, resolution, elevation=0.0, distance=1.5)
    cams.light_position = torch.tensor([light])
    return cams


@pytest.mark.parametrize("compact_every", [1, 16])
def test_sphere_trace_finds_the_sphere_and_its_normals(compact_every):
    table = PartTable.from_objects([OBJECTS["sphere"]])
    o = torch.tensor([[1.5, 0.0, 0.0], [1.5, 0.0, 0.3], [1.5, 0.0, 0.0]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    near, far = torch.tensor([0.8, 0.8, 0.0]), torch.tensor([2.2, 2.2, 0.5])
    which = torch.zeros(3, dtype=torch.long)
    t, hit = sphere_trace(table, which, o, d, near, far, 32, 1e-5, compact_every)
    assert hit.tolist() == [True, True, False]
    assert t[0].item() == pytest.approx(1.05, abs=1e-4)
    assert t[1].item() == pytest.approx(1.5 - math.sqrt(0.45**2 - 0.3**2), abs=1e-4)
    p = torch.tensor([[0.45, 0.0, 0.0], [0.0, 0.3, 0.3]])
    n = sdf_normals(table, p, torch.zeros(2, dtype=torch.long), 1e-3)
    assert torch.allclose(n, torch.nn.functional.normalize(p, dim=-1), atol=1e-4)


@pytest.mark.parametrize("supersample", [1, 2])
def test_render_albedo_center_and_background_corner(supersample):
    cams = _camera_on_x(15, (2.0, 0.0, 0.0))
    red = torch.tensor([COLORS["red"]])
    background = torch.tensor([0.2, 0.7, 0.3])
    cfg = WorldConfig(supersample=supersample)
    image = render_object(OBJECTS["sphere"], cams, "albedo", background, colors=red, cfg=cfg)
    assert image.shape == (1, 3, 15, 15)
    assert torch.allclose(image[0, :, 7, 7], red[0], atol=1e-6)
    assert torch.allclose(image[0, :, 0, 0], background, atol=1e-6)
    assert image.min() >= 0 and image.max() <= 1


def test_render_shading_modes_at_the_center_pixel():
    red = torch.tensor(COLORS["red"])
    bg = torch.zeros(3)
    cfg = WorldConfig(supersample=1)  # one ray per pixel: the center pixel's ray is the x axis
    # Light on the camera axis: n . l = 1 at the center, c = rho * (0.9 + 0.1).
    cams = _camera_on_x(15, (2.0, 0.0, 0.0))
    lit = render_object(OBJECTS["sphere"], cams, "lambertian", bg, colors=red[None], cfg=cfg)
    white = render_object(OBJECTS["sphere"], cams, "textureless", bg, colors=red[None], cfg=cfg)
    assert torch.allclose(lit[0, :, 7, 7], red, atol=1e-3)
    assert torch.allclose(white[0, :, 7, 7], torch.ones(3), atol=1e-3)
    # Light behind the visible point: ambient only, c = 0.1 * rho.
    cams = _camera_on_x(15, (-2.0, 0.0, 0.0))
    dark = render_object(OBJECTS["sphere"], cams, ["lambertian"], bg, colors=red[None], cfg=cfg)
    assert torch.allclose(dark[0, :, 7, 7], 0.1 * red, atol=1e-4)


def test_sample_batch_shapes_labels_and_captions():
    cfg = WorldConfig(camera=CameraConfig(resolution=16, elevation_range=(-45.0, 90.0)))
    images, captions, labels = sample_batch(12, torch.Generator().manual_seed(0), "cpu", cfg=cfg)
    assert images.shape == (12, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert len(captions) == 12
    columns = {"shape", "color", "view", "mode", "elevation", "azimuth", "distance", "focal"}
    assert set(labels) == columns | {"c2w"}
    for key in columns:
        assert labels[key].shape == (12,), key
    # The camera-to-world matrices put each camera at its elevation, azimuth and distance.
    position = labels["c2w"][:, :3, 3]
    assert labels["c2w"].shape == (12, 4, 4)
    assert torch.allclose(position.norm(dim=-1), labels["distance"], atol=1e-5)
    azimuth = torch.rad2deg(torch.atan2(position[:, 1], position[:, 0]))
    assert torch.allclose(
        torch.remainder(azimuth - labels["azimuth"] + 180, 360) - 180, torch.zeros(12), atol=1e-3
    )
    for i, text in enumerate(captions):
        assert text.endswith(f", {WORLD_VIEWS[int(labels['view'][i])]} view")
        assert COLOR_NAMES[int(labels["color"][i])] in text.split()
        nouns = NOUNS[SHAPE_NAMES[int(labels["shape"][i])]]
        assert any(noun in text for noun in nouns)
    assert ((labels["focal"] >= 0.7) & (labels["focal"] <= 1.35)).all()
    assert ((labels["elevation"] >= -45) & (labels["elevation"] <= 90)).all()


def test_sample_batch_is_deterministic_and_respects_restrictions():
    cfg = WorldConfig(camera=CameraConfig(resolution=16), mode_shares=(0.0, 0.0, 1.0))
    a = sample_batch(6, torch.Generator().manual_seed(7), objects=["cube", "torus"], colors=["red"], cfg=cfg)
    b = sample_batch(6, torch.Generator().manual_seed(7), objects=["cube", "torus"], colors=["red"], cfg=cfg)
    c = sample_batch(6, torch.Generator().manual_seed(8), objects=["cube", "torus"], colors=["red"], cfg=cfg)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0])
    assert set(a[2]["shape"].tolist()) <= {SHAPE_NAMES.index("cube"), SHAPE_NAMES.index("torus")}
    assert (a[2]["color"] == COLOR_NAMES.index("red")).all()
    assert (a[2]["mode"] == 2).all()  # textureless only
    with pytest.raises(KeyError, match="known"):
        sample_batch(2, torch.Generator(), objects=["teapot"])


def test_fused_and_grouped_rendering_agree():
    # The GPU strategy (one pass, every ray every step) runs eagerly on the CPU here.
    base = WorldConfig(camera=CameraConfig(resolution=16, elevation_range=(-45.0, 90.0)), supersample=1)
    grouped = dataclasses.replace(base, fused=False)
    one_pass = dataclasses.replace(base, fused=True)
    a = sample_batch(10, torch.Generator().manual_seed(11), cfg=grouped)
    b = sample_batch(10, torch.Generator().manual_seed(11), cfg=one_pass)
    assert a[1] == b[1]
    same = (a[0] - b[0]).abs().amax(1) < 1e-4  # (n, H, W)
    assert same.float().mean() > 0.995  # a silhouette pixel may flip on float rounding


def test_backgrounds_plain_white_and_vertical_gradients():
    cfg = WorldConfig(background_white=0.3, background_gradient=0.4)
    avoid = torch.tensor([COLORS["red"]]).expand(400, 3)
    bg = sample_backgrounds(400, 8, 8, torch.Generator().manual_seed(9), cfg, avoid=avoid)
    assert bg.shape == (400, 3, 8, 8)
    assert torch.equal(bg, bg[..., :1].expand_as(bg))  # constant along each row
    top, bottom = bg[:, :, 0, 0], bg[:, :, -1, 0]
    white = (top == 1).all(-1) & (bottom == 1).all(-1)
    gradient = (top - bottom).abs().amax(-1) > 1e-6
    assert 0.2 < white.float().mean() < 0.4 and 0.3 < gradient.float().mean() < 0.5
    contrast = torch.minimum((top - avoid).abs().amax(-1), (bottom - avoid).abs().amax(-1))
    assert (contrast[~white] >= cfg.background_min_contrast).all()


def test_render_matches_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = WorldConfig(camera=CameraConfig(resolution=16))
    cpu = sample_batch(8, torch.Generator().manual_seed(3), "cpu", cfg=cfg)
    gpu = sample_batch(8, torch.Generator().manual_seed(3), "cuda", cfg=cfg)
    assert gpu[0].device.type == "cuda" and cpu[1] == gpu[1]
    # Sphere tracing may stop one step apart at silhouettes; nearly all pixels must agree.
    close = (gpu[0].cpu() - cpu[0]).abs().amax(1) < 1e-3
    assert close.float().mean() > 0.98
