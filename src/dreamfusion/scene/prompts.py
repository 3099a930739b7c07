"""View-dependent prompts: the paper's rule for appending the camera's view to the text."""

from __future__ import annotations

import torch
from torch import Tensor

VIEWS = ("front", "side", "back", "overhead")
"""The paper's views in index order; `view_index` returns indices into ALL_VIEWS, which extends this."""

ALL_VIEWS = (*VIEWS, "bottom")
"""The paper's views plus "bottom", used only when a bottom elevation is set (the bundled world's rule)."""


def view_index(
    elevation: Tensor, azimuth: Tensor, overhead_above: float = 60.0, bottom_below: float | None = None
) -> Tensor:
    """Index into ALL_VIEWS for each camera: (B,) degrees, (B,) degrees -> (B,) long.

    overhead when elevation > 60 degrees; otherwise front within 45 degrees of the front (+x,
    azimuth 0), back within 45 degrees of the back, side otherwise. With `bottom_below` set,
    cameras below that elevation are "bottom" whatever their azimuth.
    """
    az = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    index = torch.full_like(az, ALL_VIEWS.index("side"), dtype=torch.long)
    index[az.abs() <= 45.0] = ALL_VIEWS.index("front")
    index[az.abs() >= 135.0] = ALL_VIEWS.index("back")
    index[elevation > overhead_above] = ALL_VIEWS.index("overhead")
    if bottom_below is not None:
        index[elevation < bottom_below] = ALL_VIEWS.index("bottom")
    return index


def view_prompts(prompt: str, bottom: bool = False) -> list[str]:
    """The prompt with each view suffix, in ALL_VIEWS order (the bottom one only if asked)."""
    views = ALL_VIEWS if bottom else VIEWS
    return [f"{prompt}, {view} view" for view in views]
