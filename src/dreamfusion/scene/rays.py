"""Rays: from cameras to origins and directions, and where they cross the bounding sphere."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamfusion.scene.cameras import Cameras


def generate_rays(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """One ray through each pixel center.

    Returns origins (B, H, W, 3) and unit directions (B, H, W, 3) in world space. Pixel (0, 0)
    is the top-left of the image; the camera looks along its -z axis (OpenGL).
    """
    return pixel_rays(cameras.c2w, cameras.focal, cameras.height, cameras.width)


def pixel_rays(c2w: Tensor, focal: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """`generate_rays` from camera-to-world matrices (B, 3 or 4, 4) and focal lengths (B,) in pixels."""
    H, W = height, width
    device = c2w.device
    v, u = torch.meshgrid(
        torch.arange(H, device=device, dtype=torch.float32) + 0.5,
        torch.arange(W, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    f = focal[:, None, None]
    x = (u[None] - 0.5 * W) / f
    y = -(v[None] - 0.5 * H) / f
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    rot = c2w[:, None, None, :3, :3]
    directions = torch.nn.functional.normalize((rot @ dirs_cam[..., None])[..., 0], dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions


def intersect_sphere(origins: Tensor, directions: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Where unit-direction rays (..., 3) enter and leave a sphere at the origin.

    Returns near (...), far (...) and hit (...) bool. near is clamped at 0 so a camera inside
    the sphere starts at its own position; rays that miss get near = far = 0.
    """
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = torch.sqrt(disc.clamp(min=0.0))
    near = (-b - root).clamp(min=0.0)
    far = (-b + root).clamp(min=0.0)
    hit = hit & (far > near)
    near = torch.where(hit, near, torch.zeros_like(near))
    far = torch.where(hit, far, torch.zeros_like(far))
    return near, far, hit
