"""Fields known in closed form: ground truth for tests and the closed-form guidance backend."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SphereField(nn.Module):
    """A solid sphere of constant albedo centered at the origin; no trainable parameters.

    density = peak_density * sigmoid(sharpness * (radius - |x|)): flat at `peak_density` inside,
    falling to ~0 over a shell of width ~ 8 / sharpness around the surface. Being smooth, its
    gradient (hence the normal) is defined everywhere except the center and points radially.
    A sigmoid rather than softplus(sharpness * (radius - |x|)): the softplus grows only
    linearly under the surface, so the sphere would look translucent near its rim.
    """

    def __init__(
        self,
        radius: float,
        color: tuple[float, float, float],
        bound_radius: float,
        sharpness: float = 100.0,
        peak_density: float = 100.0,
    ):
        super().__init__()
        if radius >= bound_radius:
            raise ValueError(f"sphere radius {radius} must be below the bound radius {bound_radius}")
        self.radius = radius
        self.color = tuple(float(c) for c in color)
        self.bound_radius = bound_radius
        self.sharpness = sharpness
        self.peak_density = peak_density

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density, exactly 0 outside the bounding sphere."""
        sq = (points * points).sum(-1)
        # The epsilon keeps the gradient of |x| finite at the center.
        dist = torch.sqrt(sq + 1e-12)
        density = self.peak_density * torch.sigmoid(self.sharpness * (self.radius - dist))
        return torch.where(sq <= self.bound_radius**2, density, torch.zeros_like(density))

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) -> density (N,), albedo (N, 3) = the color everywhere."""
        albedo = points.new_tensor(self.color).expand(points.shape[0], 3)
        return self.density(points), albedo
