"""Signed distance functions of the world's building blocks: pure functions, batched over points.

Every function maps points (..., 3) in the shape's own frame to signed distances (...,):
negative inside, zero on the surface, positive outside. All of them are exact Euclidean
distances (not bounds), so sphere tracing may step by the full value and the iso-surface
sdf = 0 is the ground-truth surface. A union of exact SDFs (pointwise min) stays exact
outside and exact in sign everywhere.

Parameters are floats, or tensors that broadcast against points[..., 0] (so one call can
evaluate many differently sized parts at once, see dreamfusion.world.table).
"""

from __future__ import annotations

import torch
from torch import Tensor

Param = float | Tensor


def _length(*components: Tensor) -> Tensor:
    return torch.sqrt(sum(c * c for c in components))


def _signed(inside: Tensor, distance: Tensor) -> Tensor:
    return torch.where(inside, -distance, distance)


def sphere(points: Tensor, radius: Param) -> Tensor:
    """Sphere at the origin."""
    return points.norm(dim=-1) - radius


def box(points: Tensor, hx: Param, hy: Param, hz: Param) -> Tensor:
    """Axis-aligned box centered at the origin with half side lengths (hx, hy, hz)."""
    qx, qy, qz = points[..., 0].abs() - hx, points[..., 1].abs() - hy, points[..., 2].abs() - hz
    outside = _length(qx.clamp(min=0.0), qy.clamp(min=0.0), qz.clamp(min=0.0))
    return outside + torch.maximum(torch.maximum(qx, qy), qz).clamp(max=0.0)


def cylinder(points: Tensor, radius: Param, half_height: Param) -> Tensor:
    """Solid cylinder with axis z, centered at the origin (caps at z = +-half_height)."""
    dr = points[..., :2].norm(dim=-1) - radius
    dz = points[..., 2].abs() - half_height
    return _length(dr.clamp(min=0.0), dz.clamp(min=0.0)) + torch.maximum(dr, dz).clamp(max=0.0)


def torus(points: Tensor, major: Param, minor: Param) -> Tensor:
    """Torus with axis z (the ring lies in the xy-plane), centered at the origin."""
    return _length(points[..., :2].norm(dim=-1) - major, points[..., 2]) - minor


def capsule(points: Tensor, half_length: Param, radius: Param) -> Tensor:
    """All points within `radius` of the segment z in [-half_length, half_length] on the z axis."""
    z = points[..., 2]
    dz = z - torch.clamp(z, -half_length, half_length)
    return _length(points[..., 0], points[..., 1], dz) - radius


def cone(points: Tensor, radius: Param, height: Param) -> Tensor:
    """Solid cone: base disk of `radius` centered at the origin in z = 0, apex at (0, 0, height).

    A solid of revolution: the nearest surface point lies in the point's own meridian
    half-plane, so the 3D distance is the 2D distance of (r, z) = (|p_xy|, z) to the profile
    triangle's two outer edges, the base (0, 0)-(radius, 0) and the side (radius, 0)-(0, height).
    """
    r, z = points[..., :2].norm(dim=-1), points[..., 2]
    s = (r / radius).clamp(0.0, 1.0)
    to_base = (r - s * radius) ** 2 + z * z
    # Side edge from (radius, 0) toward (0, height): direction (-radius, height).
    u = ((height * z - radius * (r - radius)) / (radius * radius + height * height)).clamp(0.0, 1.0)
    to_side = (r - radius + u * radius) ** 2 + (z - u * height) ** 2
    inside = (z >= 0.0) & (r * height + z * radius <= radius * height)
    return _signed(inside, torch.sqrt(torch.minimum(to_base, to_side)))


def pyramid(points: Tensor, half_base: Param, height: Param) -> Tensor:
    """Exact SDF of a square pyramid: base square |x|, |y| <= half_base in z = 0, apex (0, 0, height).

    By the pyramid's mirror symmetries, fold the point into the wedge x >= y >= 0; its nearest
    surface point then lies in the same wedge, on the +x face or on the base, so the distance
    is the smaller of the two. In the wedge, the +x face plane and the base plane alone decide
    inside/outside.
    """
    h, H = half_base, height
    slant = (h * h + H * H) ** 0.5
    ax, ay = points[..., 0].abs(), points[..., 1].abs()
    x, y, z = torch.maximum(ax, ay), torch.minimum(ax, ay), points[..., 2]
    # The +x face in its own frame: offset w along the outward normal (H, 0, h) / slant, height s
    # up the face along (-h, 0, H) / slant from its base edge, and y; the face is the 2D
    # triangle (s, y) in {(0, -h), (0, h), (slant, 0)}, and y >= 0 leaves two of its edges.
    w = (H * (x - h) + h * z) / slant
    s = (H * z - h * (x - h)) / slant
    to_base_edge = s * s + (y - h).clamp(min=0.0) ** 2
    t = ((s * slant - (y - h) * h) / (slant * slant + h * h)).clamp(0.0, 1.0)
    to_slant_edge = (s - t * slant) ** 2 + (y - h + t * h) ** 2
    in_triangle = (s >= 0.0) & (s * h + y * slant <= slant * h)
    in_plane = torch.where(in_triangle, 0.0, torch.minimum(to_base_edge, to_slant_edge))
    to_face = torch.sqrt(w * w + in_plane)
    to_base = _length((x - h).clamp(min=0.0), (y - h).clamp(min=0.0), z)
    inside = (z >= 0.0) & (w <= 0.0)
    return _signed(inside, torch.minimum(to_face, to_base))


def cut_sphere(points: Tensor, radius: Param, cut: Param) -> Tensor:
    """The part z >= cut of the sphere of `radius` at the origin: a dome on a flat disk (0 <= cut < radius).

    The surface has two pieces, the spherical cap and the disk, which meet at the rim circle.
    The nearest point of the cap is the radial projection when that lies on the cap, else the
    rim; the nearest point of the disk is straight below/above when within it, else the rim.
    """
    r, z = points[..., :2].norm(dim=-1), points[..., 2]
    n = _length(r, z)
    rim_radius = (radius * radius - cut * cut) ** 0.5
    to_rim = _length(r - rim_radius, z - cut)
    to_cap = torch.where(z * radius >= cut * n, (n - radius).abs(), to_rim)
    to_disk = torch.where(r <= rim_radius, (z - cut).abs(), to_rim)
    inside = (n <= radius) & (z >= cut)
    return _signed(inside, torch.minimum(to_cap, to_disk))


SDF_BY_KIND = {
    "sphere": sphere,
    "box": box,
    "cylinder": cylinder,
    "torus": torus,
    "capsule": capsule,
    "cone": cone,
    "pyramid": pyramid,
    "cut_sphere": cut_sphere,
}
"""Part kind -> SDF; each takes its parameters positionally after the points."""
