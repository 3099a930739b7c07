"""Training data for the prior: a ring buffer of world renders, refreshed a block at a time.

Rendering a whole batch every step would make the renderer, not the U-Net, set the pace (and
the GPU renderer is several times faster per image on large batches); so every `every` steps one
block of `block` new images replaces the oldest block of a pool of `size` images, and each batch
is drawn from the whole pool (an image is seen about batch * every / block times).
Block k is always rendered from its own generator, seeded by (seed, k), and lives in slot
k mod (size / block): so the pool before any step is a function of the step alone, and a resumed
run rebuilds exactly the pool the uninterrupted run had, without saving it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from dreamfusion.prior.text import Tokenizer
from dreamfusion.prior.unet import CAMERA_WIDTH, camera_features
from dreamfusion.world.config import WorldConfig, world_cameras
from dreamfusion.world.dataset import sample_batch


def world_config(
    image_size: int, supersample: int = 2, march_steps: int = 64, view_suffix_probability: float = 1.0
) -> WorldConfig:
    """The world's renderer settings at the prior's resolution (the world's camera range)."""
    return WorldConfig(
        camera=dataclasses.replace(world_cameras(), resolution=image_size),
        supersample=supersample,
        march_steps=march_steps,
        view_suffix_probability=view_suffix_probability,
    )


def block_generator(seed: int, block: int) -> torch.Generator:
    """The CPU generator of one block: independent of every other block and of the step order."""
    return torch.Generator().manual_seed((seed << 32) + block)


class WorldPool:
    """`size` captioned renders on `device`: images in [-1, 1], token ids, camera features, modes."""

    def __init__(
        self,
        size: int,
        block: int,
        every: int,
        tokenizer: Tokenizer,
        world: WorldConfig,
        seed: int,
        device: torch.device,
        objects: Sequence[str] | None = None,
        colors: Sequence[str] | None = None,
    ) -> None:
        if block <= 0 or size % block or every <= 0:
            raise ValueError(
                f"pool size {size} must be a positive multiple of the render block {block}, "
                f"rendered every {every} >= 1 steps"
            )
        self.size, self.block, self.every, self.blocks = size, block, every, size // block
        self.tokenizer, self.world, self.seed, self.device = tokenizer, world, seed, device
        self.objects, self.colors = objects, colors
        res = world.camera.resolution
        self.images = torch.empty(size, 3, res, res, device=device)  # (P, 3, H, W) in [-1, 1]
        self.tokens = torch.empty(size, tokenizer.max_length, dtype=torch.long, device=device)  # (P, L)
        self.camera = torch.empty(size, CAMERA_WIDTH, device=device)  # (P, CAMERA_WIDTH) camera_features
        self.mode = torch.empty(size, dtype=torch.long, device=device)  # (P,) index into SHADING_MODES

    def render_block(self, k: int) -> None:
        """Render block `k` into its slot."""
        images, captions, labels = sample_batch(
            self.block, block_generator(self.seed, k), self.device, self.objects, self.colors, self.world
        )
        slot = k % self.blocks
        rows = slice(slot * self.block, (slot + 1) * self.block)
        self.images[rows] = images * 2.0 - 1.0
        self.tokens[rows] = self.tokenizer.encode(captions).to(self.device)
        self.camera[rows] = camera_features(
            labels["elevation"], labels["azimuth"], labels["distance"], labels["focal"], labels["c2w"]
        )
        self.mode[rows] = labels["mode"]

    def fill(self, step: int) -> None:
        """The pool as it stands before `step`: blocks ceil(step / every) onwards, `blocks` of them."""
        first = -(-step // self.every)
        for k in range(first, first + self.blocks):
            self.render_block(k)

    def advance(self, step: int) -> None:
        """At training step `step`, if it is a multiple of `every`: replace the oldest block
        (step / every) by block step / every + blocks."""
        if step % self.every == 0:
            self.render_block(step // self.every + self.blocks)

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images (B, 3, H, W), token ids (B, L), cameras (B, CAMERA_WIDTH), shading modes (B,) at pool
        rows `index` (B,)."""
        return self.images[index], self.tokens[index], self.camera[index], self.mode[index]
