"""The world's named colors: fixed RGB albedos (linear, in [0, 1]).

Albedos stay inside [0.08, 0.95] on purpose: a diffusion prior trained on them learns colors
that a sigmoid albedo head can reach without saturating to the gamut corners.
"""

from __future__ import annotations

RGB = tuple[float, float, float]

COLORS: dict[str, RGB] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.92, 0.82, 0.15),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.12, 0.28, 0.85),
    "purple": (0.50, 0.18, 0.70),
    "pink": (0.95, 0.55, 0.72),
    "white": (0.92, 0.92, 0.92),
    "black": (0.08, 0.08, 0.08),
    "brown": (0.48, 0.28, 0.12),
}
"""Caption color name -> RGB albedo. Insertion order is the color label index."""

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
"""Color names in label-index order."""

# Fixed colors of composite parts that do not take the caption's color (a carrot nose, a door).
# They are not caption words: "a red snowman" still has an orange nose.
CARROT: RGB = COLORS["orange"]
COAL: RGB = COLORS["black"]
DARK_WOOD: RGB = (0.30, 0.17, 0.08)
BARK: RGB = (0.40, 0.25, 0.12)
CREAM: RGB = (0.90, 0.86, 0.76)
