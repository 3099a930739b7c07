"""The prior's denoiser: a text- and camera-conditioned pixel U-Net (ADM-style, small).

Conditioning enters twice:
- one embedding vector per image, added into every residual block as a scale and shift of its
  normalized features: timestep + camera + shading mode + pooled text;
- the text tokens, attended to by cross-attention at the coarse resolutions.

Why the camera: with distance and focal length both random, the apparent size of an object does
not pin down its size or proportions (a cube seen closer with a shorter lens looks like a taller
box). Given the camera, the image distribution of "a cube" has one size, and SDS inherits it.

Optionally each pixel's ray as well (`ray_channels = 6`: direction and moment, Pluecker coordinates,
as extra input channels), so the network sees which way every pixel looks in the world. Measured
(docs/prior.md, "Which way does the prior think an object faces?"): the shipped prior ignores the
azimuth (a cube turned 45 degrees scores as the true one under SDS), and neither a fine-tune with
rays nor half a run from scratch with them made it use the azimuth much; the shipped weights and
the `bundled` recipe stay without rays.

Optionally a camera-text MLP (`camera_text_width > 0`, `CameraTextMLP`): camera features, azimuth
harmonics and pooled text through one MLP into the embedding. Together with training at high noise
(`prior train --timesteps 0.6 1.0`) it taught a fine-tune of the shipped prior the azimuth; the
`bundled-camera-text` preset is that architecture.

Why the shading mode (albedo / lambertian / textureless, or unknown): a third of the world's
images are textureless (white albedo), as SDS renders them. Told the mode, samples can be asked
to show their color; SDS, which does not tell the backend its mode, uses "unknown", which the
model learns from the share of training images whose mode is withheld.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamfusion.prior.layers import Attention, FeedForward, timestep_embedding, zero_init
from dreamfusion.prior.text import TextStates
from dreamfusion.render.shading import SHADING_MODES
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.rays import pixel_rays

CAMERA_FEATURES = 7
"""Entries of `camera_features` that feed the embedding."""
CAMERA_WIDTH = CAMERA_FEATURES + 13
"""Width of the whole camera input: the features, then the camera-to-world matrix's top three rows
(12) and the focal multiplier, from which `ray_map` builds the rays."""
UNKNOWN_MODE = len(SHADING_MODES)
"""Mode index meaning "any shading": the model's input when the mode is not given."""


def camera_features(
    elevation: Tensor, azimuth: Tensor, distance: Tensor, focal: Tensor, c2w: Tensor
) -> Tensor:
    """What the U-Net knows of the camera: (B,) each and c2w (B, 4, 4) -> (B, CAMERA_WIDTH) float32.

    elevation, azimuth in degrees (angles as sin/cos: azimuth wraps around); distance from the
    origin; focal as the multiplier lambda = focal_px / width. The log of focal / distance, the
    apparent scale of the object, is given directly. Offsets center the world's ranges
    (distance 1..1.5, lambda 0.7..1.35). These seven entries, of order one, feed the embedding; the
    pose and lambda after them are what `ray_map` needs.
    """
    el, az = torch.deg2rad(elevation.float()), torch.deg2rad(azimuth.float())
    distance, focal = distance.float(), focal.float()
    features = torch.stack(
        [
            torch.sin(el),
            torch.cos(el),
            torch.sin(az),
            torch.cos(az),
            (distance - 1.25) * 4.0,
            (focal - 1.0) * 3.0,
            torch.log(focal / distance) * 3.0,
        ],
        dim=-1,
    )
    pose = c2w[:, :3, :4].float().reshape(-1, 12).to(features.device)
    return torch.cat([features, pose, focal[:, None]], dim=-1)


def camera_input(cameras: Cameras) -> Tensor:
    """`camera_features` of `Cameras`: (B, CAMERA_WIDTH)."""
    c = cameras
    return camera_features(c.elevation, c.azimuth, c.distance, c.focal / c.width, c.c2w)


def ray_map(camera: Tensor, size: int) -> Tensor:
    """Each pixel's ray in Pluecker coordinates: camera (B, CAMERA_WIDTH) -> (B, 6, size, size),
    the unit direction d and the moment o x d (o the camera position)."""
    c2w = camera[:, CAMERA_FEATURES : CAMERA_FEATURES + 12].reshape(-1, 3, 4).float()
    origins, directions = pixel_rays(c2w, camera[:, -1].float() * size, size, size)
    moment = torch.linalg.cross(origins, directions, dim=-1)
    return torch.cat([directions, moment], dim=-1).permute(0, 3, 1, 2)


@dataclass
class UNetConfig:
    """Shape of the U-Net; saved with the weights."""

    image_size: int = 64
    """Width and height of the images it denoises."""
    channels: tuple[int, ...] = (64, 128, 192, 256)
    """Feature channels per resolution level (each level halves the resolution)."""
    blocks_per_level: int = 2
    """Residual blocks per level on the way down (one more on the way up)."""
    attention_levels: tuple[int, ...] = (2, 3)
    """Levels (0 = full resolution) with self- and cross-attention after each block."""
    head_dim: int = 32
    """Channels per attention head."""
    emb_dim: int = 256
    """Width of the timestep + camera + pooled-text embedding."""
    text_dim: int = 128
    """Width of the text encoder's states (set from the text encoder)."""
    groups: int = 32
    """GroupNorm groups (must divide every channel count)."""
    ff_mult: int = 2
    """Hidden width of the attention blocks' feed-forward, as a multiple of the channels."""
    shading_modes: int = len(SHADING_MODES)
    """Shading modes the model can be told (SHADING_MODES order), plus one "unknown"."""
    ray_channels: int = 0
    """6: each pixel's ray (`ray_map`) joins the noisy image at the input; 0: the camera enters only
    through the embedding (the first shipped prior)."""
    camera_text_width: int = 0
    """Hidden width of `CameraTextMLP`, whose output joins the embedding (0: none, the first
    shipped prior). It lets the camera's effect depend on the object: the camera MLP alone sees no
    text, and the sum of the two embeddings barely mixes them."""


AZIMUTH_HARMONICS = 4
"""Harmonics of the azimuth given to `CameraTextMLP`: a cube or a pyramid looks the same every 90
degrees (harmonic 4), a house every 360 (harmonic 1)."""


def azimuth_harmonics(camera: Tensor) -> Tensor:
    """sin and cos of k * azimuth for k = 2..AZIMUTH_HARMONICS (k = 1 is in the features):
    camera (B, CAMERA_WIDTH) -> (B, 2 * (AZIMUTH_HARMONICS - 1))."""
    azimuth = torch.atan2(camera[:, 2].float(), camera[:, 3].float())
    k = torch.arange(2, AZIMUTH_HARMONICS + 1, device=camera.device, dtype=torch.float32)
    angles = azimuth[:, None] * k
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class CameraTextMLP(nn.Module):
    """The camera (features and azimuth harmonics) and the pooled text, through one MLP: an
    embedding term that can say "a cube seen 45 degrees off a face" rather than a camera term plus
    a text term. Its output layer starts at zero, so adding it to trained weights changes nothing."""

    def __init__(self, text_dim: int, width: int, emb_dim: int) -> None:
        super().__init__()
        inputs = CAMERA_FEATURES + 2 * (AZIMUTH_HARMONICS - 1) + text_dim
        self.net = nn.Sequential(
            nn.Linear(inputs, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            zero_init(nn.Linear(width, emb_dim)),
        )

    def forward(self, camera: Tensor, pooled: Tensor) -> Tensor:
        """camera (B, CAMERA_WIDTH), pooled text (B, text_dim) -> (B, emb_dim)."""
        features = camera[:, :CAMERA_FEATURES].float()
        return self.net(torch.cat([features, azimuth_harmonics(camera), pooled.float()], dim=-1))


class ResBlock(nn.Module):
    """GN-SiLU-conv, then GN with the embedding's scale and shift, SiLU, conv (zero-init), plus skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class AttentionBlock(nn.Module):
    """Self-attention over pixels, cross-attention to the text tokens, feed-forward; all residual."""

    def __init__(self, channels: int, text_dim: int, head_dim: int, groups: int, ff_mult: int) -> None:
        super().__init__()
        heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(groups, channels)
        self.self_attn = Attention(channels, heads)
        self.cross_norm = nn.LayerNorm(channels)
        self.cross_attn = Attention(channels, heads, context_dim=text_dim)
        self.ff = FeedForward(channels, ff_mult)

    def forward(self, x: Tensor, text: TextStates) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = x.flatten(2).transpose(1, 2) + self.self_attn(h)
        h = h + self.cross_attn(self.cross_norm(h), text.tokens.to(h.dtype), text.mask)
        h = h + self.ff(h)
        return h.transpose(1, 2).reshape(B, C, H, W)


class _Level(nn.Module):
    """Residual blocks of one resolution, each optionally followed by attention."""

    def __init__(self, c_ins: list[int], c_out: int, attention: bool, cfg: UNetConfig) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, c_out, cfg.emb_dim, cfg.groups) for c in c_ins)
        self.attn = nn.ModuleList(
            AttentionBlock(c_out, cfg.text_dim, cfg.head_dim, cfg.groups, cfg.ff_mult)
            if attention
            else nn.Identity()
            for _ in c_ins
        )


class UNet(nn.Module):
    """eps- or v-prediction network: (z_t (B, 3, H, W), t (B,), text, camera (B, CAMERA_WIDTH),
    mode (B,) or None) -> (B, 3, H, W)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        if cfg.image_size % 2 ** (len(cfg.channels) - 1):
            raise ValueError(f"image_size {cfg.image_size} does not halve {len(cfg.channels) - 1} times")
        if cfg.ray_channels not in (0, 6):
            raise ValueError(f"ray_channels must be 0 or 6, got {cfg.ray_channels}")
        self.cfg = cfg
        E = cfg.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E))
        self.camera_mlp = nn.Sequential(nn.Linear(CAMERA_FEATURES, E), nn.SiLU(), nn.Linear(E, E))
        self.text_proj = nn.Linear(cfg.text_dim, E)
        self.mode_embed = nn.Embedding(cfg.shading_modes + 1, E)
        if cfg.camera_text_width:
            self.camera_text = CameraTextMLP(cfg.text_dim, cfg.camera_text_width, E)
        self.conv_in = nn.Conv2d(3 + cfg.ray_channels, cfg.channels[0], 3, padding=1)

        skips = [cfg.channels[0]]  # channels of every saved skip, in order
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = cfg.channels[0]
        for i, c_out in enumerate(cfg.channels):
            ins = [c] + [c_out] * (cfg.blocks_per_level - 1)
            self.down.append(_Level(ins, c_out, i in cfg.attention_levels, cfg))
            skips += [c_out] * cfg.blocks_per_level
            c = c_out
            if i < len(cfg.channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid_res1 = ResBlock(c, c, E, cfg.groups)
        self.mid_attn = AttentionBlock(c, cfg.text_dim, cfg.head_dim, cfg.groups, cfg.ff_mult)
        self.mid_res2 = ResBlock(c, c, E, cfg.groups)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c_out in reversed(list(enumerate(cfg.channels))):
            ins = []
            for _ in range(cfg.blocks_per_level + 1):
                ins.append(c + skips.pop())
                c = c_out
            self.up.append(_Level(ins, c_out, i in cfg.attention_levels, cfg))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = nn.GroupNorm(cfg.groups, c)
        self.conv_out = zero_init(nn.Conv2d(c, 3, 3, padding=1))

    def embedding(self, t: Tensor, text: TextStates, camera: Tensor, mode: Tensor | None = None) -> Tensor:
        """(B,) timesteps, pooled text (B, D), camera (B, CAMERA_WIDTH), shading mode (B,) long or
        None (unknown) -> (B, emb_dim)."""
        if mode is None:
            mode = torch.full_like(t, self.cfg.shading_modes)
        time = self.time_mlp(timestep_embedding(t, self.cfg.emb_dim))
        cond = (
            self.camera_mlp(camera[:, :CAMERA_FEATURES].float())
            + self.mode_embed(mode)
            + self.text_proj(text.pooled.float())
        )
        if self.cfg.camera_text_width:
            cond = cond + self.camera_text(camera, text.pooled)
        return time + cond

    def forward(
        self, z: Tensor, t: Tensor, text: TextStates, camera: Tensor, mode: Tensor | None = None
    ) -> Tensor:
        emb = self.embedding(t, text, camera, mode)
        if self.cfg.ray_channels:
            z = torch.cat([z, ray_map(camera, z.shape[-1]).to(z.dtype)], dim=1)
        h = self.conv_in(z)
        skips = [h]
        for i, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = res(h, emb)
                h = attn(h, text) if isinstance(attn, AttentionBlock) else h
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb), text), emb)
        for i, level in enumerate(self.up):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = res(torch.cat([h, skips.pop()], dim=1), emb)
                h = attn(h, text) if isinstance(attn, AttentionBlock) else h
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
