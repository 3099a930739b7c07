"""The world's objects: seven primitives of exact size and composites built from them.

Coordinates: +z up, the front faces +x, every object centered at the origin and inside the
sphere of radius 0.65. An object is a union of parts; each part is a shape in its own frame,
placed by a translation and an optional rotation, with either a fixed color or the object's
color. The sizes of the primitives are ground truth for scoring and must not drift: they
are listed, with their volumes, in docs/world.md and checked in tests/world/test_world.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.world.colors import BARK, CARROT, COAL, COLORS, CREAM, DARK_WOOD, RGB
from dreamfusion.world.sdf import SDF_BY_KIND

Vec3 = tuple[float, float, float]

WORLD_VERSION = 2
"""Bumped whenever an object's ground truth changes; a fidelity prompt set names the world it was
written for. 2: the house became deeper than wide, with a gable roof and a framed door (1: a
square house with a pyramid roof, whose front showed only in a few door pixels)."""


@functools.cache
def rotation_z_to(axis: Vec3) -> tuple[Vec3, Vec3, Vec3]:
    """Rows of the rotation matrix R (world from local) taking the local +z axis to `axis`.

    Rodrigues' formula about z x axis; the half-turn for axis = -z is special-cased.
    """
    n = math.sqrt(sum(a * a for a in axis))
    ax, ay, az = (a / n for a in axis)
    if az < -1.0 + 1e-9:
        return ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))
    # k = z x a = (-ay, ax, 0), sin = |k|, cos = az; R = I + [k] + [k]^2 / (1 + cos).
    k = 1.0 / (1.0 + az)
    return (
        (1.0 - ax * ax * k, -ax * ay * k, ax),
        (-ax * ay * k, 1.0 - ay * ay * k, ay),
        (-ax, -ay, az),
    )


@dataclass(frozen=True)
class Part:
    """One shape of an object: a primitive kind with its sizes, placed in the object's frame."""

    kind: str
    """A key of dreamfusion.world.sdf.SDF_BY_KIND."""
    params: tuple[float, ...]
    """The kind's size parameters, in the order its SDF takes them."""
    position: Vec3 = (0.0, 0.0, 0.0)
    """Where the part's origin sits in the object's frame."""
    axis: Vec3 | None = None
    """Where the part's local +z axis points in the object's frame; None keeps it along +z."""
    color: RGB | None = None
    """Fixed albedo of this part; None takes the object's color."""

    def __post_init__(self) -> None:
        if self.kind not in SDF_BY_KIND:
            raise ValueError(f"unknown part kind '{self.kind}' (use one of {', '.join(SDF_BY_KIND)})")

    def sdf(self, points: Tensor) -> Tensor:
        """(N, 3) object-frame points -> (N,) signed distance to this part."""
        local = points - points.new_tensor(self.position)
        if self.axis is not None:
            # Row vectors: local = R^T (p - t) is (p - t) @ R.
            local = local @ points.new_tensor(rotation_z_to(self.axis))
        return SDF_BY_KIND[self.kind](local, *self.params)


@dataclass(frozen=True)
class WorldObject:
    """A shape of the world with ground-truth geometry and albedo."""

    name: str
    parts: tuple[Part, ...]
    color: RGB = COLORS["white"]
    """Albedo of the parts without a fixed color."""
    front: str | None = None
    """What marks the front (+x side); None if the object has no distinct front."""
    front_marker: Vec3 | None = None
    """A point inside the object whose mirror image (-x, y, z) is outside: the front is visible."""

    def part_distances(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N, P) signed distance to each part."""
        return torch.stack([part.sdf(points) for part in self.parts], dim=-1)

    def sdf(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) signed distance: exact outside, exact in sign everywhere."""
        distance = self.parts[0].sdf(points)
        for part in self.parts[1:]:
            distance = torch.minimum(distance, part.sdf(points))
        return distance

    def occupancy(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) bool: inside or on the surface."""
        return self.sdf(points) <= 0.0

    def albedo(self, points: Tensor, color: Tensor | None = None) -> Tensor:
        """(N, 3) -> (N, 3) albedo of the nearest part.

        `color` ((3,) or (N, 3)) replaces the object's color for the parts without a fixed one,
        so one call can paint every point of a batch in its own caption color.
        """
        base = points.new_tensor(self.color) if color is None else color.to(points)
        base = base.expand(points.shape[0], 3)
        if len(self.parts) == 1:
            fixed = self.parts[0].color
            return base.clone() if fixed is None else points.new_tensor(fixed).expand_as(base).clone()
        nearest = self.part_distances(points).argmin(dim=-1)  # (N,)
        out = base.clone()
        for i, part in enumerate(self.parts):
            if part.color is not None:
                out[nearest == i] = points.new_tensor(part.color)
        return out

    def with_color(self, color: str | RGB) -> WorldObject:
        """The same object painted in a named color or an RGB albedo."""
        rgb = COLORS[color] if isinstance(color, str) else tuple(color)
        return dataclasses.replace(self, color=rgb)


# --- Primitives: exact ground-truth sizes (see docs/world.md). ---

PRIMITIVE_VOLUMES: dict[str, float] = {
    "cube": 0.7**3,
    "sphere": 4.0 / 3.0 * math.pi * 0.45**3,
    "cylinder": math.pi * 0.3**2 * 0.8,
    "cone": math.pi * 0.4**2 * 0.8 / 3.0,
    "torus": 2.0 * math.pi**2 * 0.35 * 0.12**2,
    "pyramid": 0.7**2 * 0.75 / 3.0,
    "capsule": math.pi * 0.22**2 * 0.6 + 4.0 / 3.0 * math.pi * 0.22**3,
}
"""Analytic volume of each primitive."""


PRIMITIVES: dict[str, WorldObject] = {
    name: WorldObject(name, (part,))
    for name, part in {
        # Side 0.7, axis-aligned.
        "cube": Part("box", (0.35, 0.35, 0.35)),
        "sphere": Part("sphere", (0.45,)),
        # Radius 0.3, height 0.8 (z in [-0.4, 0.4]).
        "cylinder": Part("cylinder", (0.3, 0.4)),
        # Base radius 0.4 at z = -0.35, apex at z = 0.45.
        "cone": Part("cone", (0.4, 0.8), (0.0, 0.0, -0.35)),
        "torus": Part("torus", (0.35, 0.12)),
        # Base side 0.7 at z = -0.35, apex at z = 0.4.
        "pyramid": Part("pyramid", (0.35, 0.75), (0.0, 0.0, -0.35)),
        # Radius 0.22 around the segment z in [-0.3, 0.3].
        "capsule": Part("capsule", (0.3, 0.22)),
    }.items()
}


# --- Composites. Parts with color=None take the object's (caption's) color. ---

_X: Vec3 = (1.0, 0.0, 0.0)
_Y: Vec3 = (0.0, 1.0, 0.0)


def _dome(base_radius: float, height: float, base_z: float) -> Part:
    """A dome (spherical segment) whose flat base disk of `base_radius` lies at z = base_z."""
    radius = (base_radius**2 + height**2) / (2.0 * height)
    cut = radius - height
    return Part("cut_sphere", (radius, cut), (0.0, 0.0, base_z - cut))


def _legs(half: Vec3, offset: float, z: float) -> tuple[Part, ...]:
    return tuple(Part("box", half, (sx * offset, sy * offset, z)) for sx in (-1, 1) for sy in (-1, 1))


COMPOSITES: dict[str, WorldObject] = {
    "snowman": WorldObject(
        "snowman",
        (
            Part("sphere", (0.24,), (0.0, 0.0, -0.31)),
            Part("sphere", (0.18,), (0.0, 0.0, 0.05)),
            Part("sphere", (0.13,), (0.0, 0.0, 0.33)),
            Part("cone", (0.035, 0.2), (0.1, 0.0, 0.33), _X, CARROT),
            Part("sphere", (0.022,), (0.105, 0.05, 0.38), color=COAL),
            Part("sphere", (0.022,), (0.105, -0.05, 0.38), color=COAL),
            Part("sphere", (0.02,), (0.175, 0.0, 0.08), color=COAL),
            Part("sphere", (0.02,), (0.165, 0.0, -0.02), color=COAL),
        ),
        COLORS["white"],
        front="carrot nose, coal eyes and buttons on +x",
        front_marker=(0.27, 0.0, 0.33),
    ),
    "house": WorldObject(
        "house",
        (
            # Walls 0.64 deep (x) by 0.42 wide; a gable roof (a box turned 45 degrees about x) whose
            # ridge runs front to back, so the front and the sides differ in silhouette.
            Part("box", (0.32, 0.21, 0.15), (0.0, 0.0, -0.15)),
            Part("box", (0.32, 0.17, 0.17), (0.0, 0.0, 0.0), (0.0, -1.0, 1.0)),
            Part("box", (0.045, 0.045, 0.11), (-0.2, 0.11, 0.19)),
            # The door on the +x gable wall: a cream frame around dark wood, clear on any wall color.
            Part("box", (0.012, 0.09, 0.13), (0.326, 0.0, -0.17), color=CREAM),
            Part("box", (0.02, 0.06, 0.105), (0.325, 0.0, -0.195), color=DARK_WOOD),
        ),
        COLORS["red"],
        front="door (cream frame, dark wood) on the +x gable wall; chimney on the -x half of the roof",
        front_marker=(0.335, 0.0, -0.2),
    ),
    "chair": WorldObject(
        "chair",
        (
            Part("box", (0.22, 0.22, 0.035), (0.0, 0.0, -0.05)),
            *_legs((0.03, 0.03, 0.15), 0.18, -0.235),
            Part("box", (0.03, 0.22, 0.2), (-0.19, 0.0, 0.185)),
        ),
        COLORS["brown"],
        front="open seat faces +x; the back rest is on -x",
        front_marker=(-0.19, 0.0, 0.3),
    ),
    "duck": WorldObject(
        "duck",
        (
            Part("capsule", (0.115, 0.2), (-0.035, 0.0, -0.12), _X),
            Part("sphere", (0.13,), (0.14, 0.0, 0.16)),
            Part("cone", (0.05, 0.14), (0.25, 0.0, 0.14), _X, CARROT),
            Part("sphere", (0.018,), (0.24, 0.055, 0.2), color=COAL),
            Part("sphere", (0.018,), (0.24, -0.055, 0.2), color=COAL),
            Part("cone", (0.08, 0.15), (-0.3, 0.0, -0.05), (-1.0, 0.0, 1.0)),
        ),
        COLORS["yellow"],
        front="head and orange beak toward +x; tail up toward -x",
        front_marker=(0.36, 0.0, 0.14),
    ),
    "table": WorldObject(
        "table",
        (
            Part("box", (0.32, 0.32, 0.03), (0.0, 0.0, 0.12)),
            *_legs((0.03, 0.03, 0.225), 0.26, -0.125),
        ),
        COLORS["brown"],
    ),
    "tree": WorldObject(
        "tree",
        (
            Part("cylinder", (0.07, 0.1), (0.0, 0.0, -0.25), color=BARK),
            Part("cone", (0.3, 0.35), (0.0, 0.0, -0.17)),
            Part("cone", (0.23, 0.3), (0.0, 0.0, 0.05)),
            Part("cone", (0.15, 0.25), (0.0, 0.0, 0.22)),
        ),
        COLORS["green"],
    ),
    "dumbbell": WorldObject(
        "dumbbell",
        (
            Part("sphere", (0.19,), (0.0, 0.34, 0.0)),
            Part("sphere", (0.19,), (0.0, -0.34, 0.0)),
            Part("capsule", (0.34, 0.05), axis=_Y),
        ),
        COLORS["blue"],
    ),
    "mushroom": WorldObject(
        "mushroom",
        (
            Part("cylinder", (0.09, 0.16), (0.0, 0.0, -0.19), color=CREAM),
            _dome(0.36, 0.28, -0.05),
        ),
        COLORS["red"],
    ),
}

OBJECTS: dict[str, WorldObject] = {**PRIMITIVES, **COMPOSITES}
"""Every object by name, in label-index order: primitives first, then composites."""

SHAPE_NAMES: tuple[str, ...] = tuple(OBJECTS)
"""Object names in label-index order."""

FRONTED: tuple[str, ...] = tuple(name for name, obj in OBJECTS.items() if obj.front is not None)
"""Objects with a distinct front, for measuring multi-face (Janus) failures."""
