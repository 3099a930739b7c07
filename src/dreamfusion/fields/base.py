"""The field protocol and the pieces every field shares (density blob, activations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class FieldConfig:
    """The 3D field: density and albedo at points inside the bounding sphere."""

    kind: Literal["mlp", "hashgrid"] = "hashgrid"
    """Which field: the paper's MLP with positional encoding, or a pure-PyTorch hash grid."""
    bound_radius: float = 0.8
    """Radius of the bounding sphere; the field is queried only inside it."""
    density_activation: Literal["exp", "softplus"] = "softplus"
    """Activation turning the raw density into a non-negative density."""
    blob_density: float = 10.0
    """lambda of the initial density blob tau_init = lambda * exp(-|x|^2 / (2 sigma^2))."""
    blob_radius: float = 0.5
    """sigma of the initial density blob."""
    density_bias: float = 0.0
    """Added to the raw density everywhere, blob included (beyond the paper). Under exp, a raw value of 0
    is a density of 1, a fog through the whole bounding sphere at initialization; -3 starts empty space
    at e^-3 = 0.05 instead."""
    mlp_width: int = 128
    """Hidden width of the MLP field."""
    mlp_depth: int = 4
    """Hidden layers of the MLP field."""
    pe_frequencies: int = 8
    """Octaves of the positional encoding of the MLP field."""
    hash_levels: int = 16
    """Resolution levels of the hash grid."""
    hash_features: int = 2
    """Features per level of the hash grid."""
    hash_log2_size: int = 19
    """log2 of the number of entries of each level's hash table."""
    hash_base_resolution: int = 16
    """Grid resolution of the coarsest level."""
    hash_max_resolution: int = 1024
    """Grid resolution of the finest level."""
    hash_mlp_width: int = 64
    """Hidden width of the small MLP decoding hash-grid features."""
    hash_mlp_depth: int = 2
    """Hidden layers of the small MLP decoding hash-grid features."""
    hash_kernel: Literal["torch", "triton"] = "triton"
    """The hash grid's encoding on CUDA: fused Triton kernels whose closed-form Jacobian gives the
    normals (dreamfusion.fields.hashgrid_triton), or plain PyTorch. On a CPU, or where Triton is
    missing, the PyTorch path runs (a CPU runs the kernels only under TRITON_INTERPRET=1, for tests)."""
    activation: Literal["softplus", "silu", "relu"] = "softplus"
    """Hidden activation of both fields' MLPs; softplus and silu keep second derivatives (normals) smooth."""


class Field(Protocol):
    """Density and albedo at points. Implementations are `torch.nn.Module`s.

    Points outside the sphere of radius `bound_radius` must get zero density: renderers
    rely on it, and so does mesh export.
    """

    bound_radius: float

    def __call__(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) world points -> density (N,) >= 0 and albedo (N, 3) in [0, 1]."""
        ...

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density alone (cheaper: no albedo head)."""
        ...


def device_of(field: Field) -> torch.device:
    """The device of a field's parameters; the CPU for one without any (an analytic field)."""
    param = next(iter(field.parameters()), None) if isinstance(field, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


class Background(Protocol):
    """Color seen along a ray direction where the field leaves it transparent."""

    def __call__(self, directions: Tensor) -> Tensor:
        """(..., 3) unit directions -> (..., 3) colors in [0, 1]."""
        ...


def density_blob(points: Tensor, scale: float, radius: float) -> Tensor:
    """tau_init(mu) = scale * exp(-|mu|^2 / (2 radius^2)): (N, 3) -> (N,). Added to the raw density."""
    return scale * torch.exp(-(points * points).sum(-1) / (2.0 * radius * radius))


def activate_density(raw: Tensor, kind: str) -> Tensor:
    """Raw pre-activation density -> non-negative density."""
    if kind == "exp":
        # Clamp before exp: a raw value of 100 would overflow float32 and poison the gradient.
        return torch.exp(raw.clamp(max=15.0))
    if kind == "softplus":
        return F.softplus(raw)
    raise ValueError(f"unknown density activation '{kind}' (use exp or softplus)")
