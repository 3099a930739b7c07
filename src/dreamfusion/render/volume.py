"""Volume rendering as pure functions: samples along rays, weights, compositing, normals.

Shapes: R rays, N samples per ray, C channels. Everything here is device-agnostic and
differentiable; the renderer (`dreamfusion.render.renderer`) strings these together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def compute_weights(density: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rendering weights of samples along rays.

    density (R, N) >= 0, deltas (R, N) >= 0 (segment lengths) ->
    weights (R, N), transmittance (R, N), alpha (R, N), with
    alpha_i = 1 - exp(-density_i delta_i), T_i = exp(-sum_{j<i} density_j delta_j), w_i = T_i alpha_i.

    Transmittance is an exclusive cumulative sum in log space rather than a cumulative product
    of (1 - alpha): the product's gradient divides by (1 - alpha), which is 0 for opaque samples.
    """
    if density.shape != deltas.shape or density.dim() != 2:
        raise ValueError(
            f"density and deltas must both be (R, N); got {tuple(density.shape)} and {tuple(deltas.shape)}"
        )
    optical_depth = density * deltas  # (R, N)
    # expm1 keeps alpha accurate for tiny optical depths (1 - exp(-1e-10) rounds to 0 in float32).
    alpha = -torch.expm1(-optical_depth)
    accumulated = torch.cumsum(optical_depth, dim=-1)
    exclusive = torch.cat([torch.zeros_like(accumulated[:, :1]), accumulated[:, :-1]], dim=-1)
    transmittance = torch.exp(-exclusive)
    return transmittance * alpha, transmittance, alpha


def accumulate(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum along each ray: weights (R, N), values (R, N, C) -> (R, C)."""
    if values.shape[:2] != weights.shape:
        raise ValueError(
            f"values must be (R, N, C) matching weights {tuple(weights.shape)}; got {tuple(values.shape)}"
        )
    return (weights[..., None] * values).sum(dim=1)


def accumulated_alpha(weights: Tensor) -> Tensor:
    """Opacity of each ray, sum_i w_i = 1 - T_N+1: (R, N) -> (R,)."""
    return weights.sum(dim=-1)


def expected_depth(weights: Tensor, t_mid: Tensor) -> Tensor:
    """Expected termination distance sum_i w_i t_i: (R, N), (R, N) -> (R,).

    Not normalized by the opacity, so empty rays get depth 0 (divide by `accumulated_alpha`
    for the depth of the visible surface alone).
    """
    return (weights * t_mid).sum(dim=-1)


def normal_latent(normal: Tensor, alpha: Tensor) -> Tensor:
    """(B, 3, H, W) accumulated normals sum(w n) and (B, 1, H, W) opacity -> (B, 4, H, W) in [0, 1]:
    the normal map's colors (n + 1) / 2 composited over black, then the opacity. Latent-NeRF's four
    channels for a render taken as a latent (`guidance.latent_warmup`)."""
    return torch.cat([(normal + alpha) * 0.5, alpha], dim=1)


def composite(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Premultiplied ray color over the background: rgb (R, 3), alpha (R, 1), background (R, 3) -> (R, 3).

    `rgb` is already weighted by opacity (an `accumulate` output), hence rgb + (1 - alpha) bg.
    """
    return rgb + (1.0 - alpha) * background


def sample_along_rays(
    near: Tensor, far: Tensor, n: int, stratified: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """`n` samples per ray between near (R,) and far (R,): t_mid (R, n), deltas (R, n).

    The segment is cut into n equal bins; each sample sits at its bin center, or uniformly
    inside its bin when `stratified` (drawn from `generator`, which must live on the rays'
    device). deltas are the bin widths, so they sum to far - near whatever the jitter: the
    optical depth of a ray does not depend on where the samples landed.
    """
    if n < 1:
        raise ValueError(f"samples per ray must be >= 1, got {n}")
    if near.shape != far.shape or near.dim() != 1:
        raise ValueError(f"near and far must both be (R,); got {tuple(near.shape)} and {tuple(far.shape)}")
    steps = torch.linspace(0.0, 1.0, n + 1, device=near.device, dtype=near.dtype)  # (n + 1,)
    edges = near[:, None] + (far - near)[:, None] * steps  # (R, n + 1)
    lower, upper = edges[:, :-1], edges[:, 1:]
    if stratified:
        if generator is None:
            raise ValueError("stratified sampling needs a torch.Generator (or pass stratified=False)")
        if generator.device.type != near.device.type:
            raise ValueError(
                f"the generator lives on {generator.device} but the rays on {near.device}; "
                "create it with torch.Generator(device=rays' device)"
            )
        u = torch.rand(lower.shape, generator=generator, device=near.device, dtype=near.dtype)
    else:
        u = torch.full_like(lower, 0.5)
    t_mid = lower + (upper - lower) * u
    return t_mid, upper - lower


def normals_from_density(density: Tensor, points: Tensor, create_graph: bool, eps: float = 1e-10) -> Tensor:
    """n = -grad(density) / |grad(density)| for a density (...) computed from `points` (..., 3).

    `points` must require grad and `density` must have been computed from it with grad enabled.
    Where the gradient vanishes, or the density does not depend on the points, the normal is the
    zero vector (not NaN).
    """
    if not density.requires_grad:  # a density that ignores the points (e.g. a constant) is flat
        return torch.zeros_like(points)
    (grad,) = torch.autograd.grad(density.sum(), points, create_graph=create_graph, allow_unused=True)
    if grad is None:
        return torch.zeros_like(points)
    # Clamping the squared norm (not adding eps to the norm) keeps the sqrt's gradient finite at 0.
    norm = torch.sqrt((grad * grad).sum(-1, keepdim=True).clamp(min=eps * eps))
    return -grad / norm


def density_normals(
    field_density_fn: Callable[[Tensor], Tensor], points: Tensor, create_graph: bool, eps: float = 1e-10
) -> Tensor:
    """Normals of a density field at points (..., 3) -> (..., 3) unit vectors (0 where flat).

    Enables grad locally so callers under `torch.no_grad()` (previews, mesh export) get normals
    too. Pass create_graph=True during training so losses on the normals (orientation) reach
    the field's parameters.
    """
    with torch.enable_grad():
        if not points.requires_grad:
            points = points.detach().requires_grad_(True)
        density = field_density_fn(points)
        return normals_from_density(density, points, create_graph=create_graph, eps=eps)
