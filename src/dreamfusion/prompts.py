"""View-dependent prompts: the paper's rule for appending the camera's view to the text."""

from __future__ import annotations

import torch
from torch import Tensor

VIEWS = ("front", "side", "back", "overhead")
"""View names in index order; `view_index` returns indices into this tuple."""


def view_index(elevation: Tensor, azimuth: Tensor, overhead_above: float = 60.0) -> Tensor:
    """Index into VIEWS for each camera: (B,) degrees, (B,) degrees -> (B,) long.

    overhead when elevation > 60 degrees; otherwise front within 45 degrees of the front (+x,
    azimuth 0), back within 45 degrees of the back, side otherwise.
    """
    az = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    index = torch.full_like(az, VIEWS.index("side"), dtype=torch.long)
    index[az.abs() <= 45.0] = VIEWS.index("front")
    index[az.abs() >= 135.0] = VIEWS.index("back")
    index[elevation > overhead_above] = VIEWS.index("overhead")
    return index


def view_prompts(prompt: str) -> list[str]:
    """The prompt with each view suffix, in VIEWS order."""
    return [f"{prompt}, {view} view" for view in VIEWS]
