"""A small CNN that names the shape, color and shading mode of a 64x64 image of the world.

It is the judge of the bundled prior: samples of "a red cube" should be classified as a red cube.
It is trained on the world's own renders (`dreamfusion.world.sample_batch`) with their full mix of
shading modes, camera views and backgrounds, plus a little noise and blur so that diffusion
samples (never quite as clean as renders) stay in its training distribution.

A textureless render has no color (white albedo), so the color head is trained and scored only
on albedo and lambertian images; the mode head says which images those are.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dreamfusion.atomic import atomic_write
from dreamfusion.render.shading import SHADING_MODES
from dreamfusion.world import COLOR_NAMES, SHAPE_NAMES, WorldConfig, sample_batch

WEIGHTS = Path(__file__).with_name("classifier.safetensors")
"""The committed weights (see docs/evaluation.md for how they were trained and their accuracy)."""

TEXTURELESS = SHADING_MODES.index("textureless")


class WorldClassifier(nn.Module):
    """Four conv stages (64 -> 32 -> 16 -> 8 -> 4 pixels), pooled, and three linear heads."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.steps_trained = 0  # set by train_classifier (a time budget may cut the run short)
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        stages = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            stages += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*stages)
        # Average and max pooling: the max keeps a small colored object on a large background.
        pooled = 2 * channels[-1]
        self.shape_head = nn.Linear(pooled, len(SHAPE_NAMES))
        self.color_head = nn.Linear(pooled, len(COLOR_NAMES))
        self.mode_head = nn.Linear(pooled, len(SHADING_MODES))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> logits {"shape": (B, S), "color": (B, C), "mode": (B, 3)}."""
        x = self.features(images * 2.0 - 1.0)  # (B, 4w, H/16, W/16)
        x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (B, 8w)
        return {"shape": self.shape_head(x), "color": self.color_head(x), "mode": self.mode_head(x)}


@torch.no_grad()
def classify(model: WorldClassifier, images: Tensor, chunk: int = 256) -> dict[str, Tensor]:
    """Predicted label indices {"shape", "color", "mode"}: (B,) long each, on the images' device.

    Averages the logits of each image and its mirror image (every label survives a flip).
    """
    model.eval()
    out: dict[str, list[Tensor]] = {"shape": [], "color": [], "mode": []}
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        logits, mirrored = model(x), model(x.flip(-1))
        for key in out:
            out[key].append((logits[key] + mirrored[key]).argmax(dim=-1))
    return {key: torch.cat(value) for key, value in out.items()}


def augment(
    images: Tensor, generator: torch.Generator, noise_max: float = 0.04, blur_share: float = 0.3
) -> Tensor:
    """Random horizontal flips, Gaussian pixel noise (std up to `noise_max`) and mild blur.

    Flips keep every label (a mirrored snowman is a snowman). `generator` lives on the images'
    device, so the noise is drawn where it is used.
    """
    b, device = images.shape[0], images.device

    def uniform(n: int) -> Tensor:
        return torch.rand(n, generator=generator, device=device)

    flip = uniform(b) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    kernel = images.new_full((3, 1, 3, 3), 1.0 / 9.0)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    amount = uniform(b) * (uniform(b) < blur_share)
    images = images + (blurred - images) * amount[:, None, None, None]
    std = uniform(b) * noise_max
    noise = torch.randn(images.shape, generator=generator, device=device) * std[:, None, None, None]
    return (images + noise).clamp(0.0, 1.0)


def classifier_loss(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """Cross-entropy of shape and mode on every image, of color on the images that show it."""
    colored = labels["mode"] != TEXTURELESS
    color = logits["color"][colored]
    color_loss = F.cross_entropy(color, labels["color"][colored]) if color.shape[0] else color.sum()
    return (
        F.cross_entropy(logits["shape"], labels["shape"])
        + color_loss
        + 0.5 * F.cross_entropy(logits["mode"], labels["mode"])
    )


def train_classifier(
    steps: int = 6000,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    buffer_size: int = 8192,
    fresh_per_step: int = 64,
    world: WorldConfig | None = None,
    log: Callable[[str], None] | None = print,
    log_every: int = 200,
    time_budget_s: float | None = None,
    init: WorldClassifier | None = None,
) -> WorldClassifier:
    """Train a WorldClassifier on renders drawn on the fly from the whole world.

    Rendering costs far more than a classifier step, so renders go through a replay buffer of
    `buffer_size` images: every step renders `fresh_per_step` new images into it and trains on
    `batch_size` images drawn from it. AdamW with a cosine learning rate. Deterministic for a
    seed on a given device, unless `time_budget_s` is set: then the step count is cut, after
    timing the first 50 steps, so that training ends within the budget (at most `steps`).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # renders and batches: CPU, as sample_batch wants
    noise_generator = torch.Generator(device).manual_seed(seed + 1)  # augmentation, on the device
    # `init` fine-tunes trained weights (after the world changes) instead of starting afresh.
    model = (WorldClassifier(width) if init is None else init).to(device).float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    total = [steps]  # mutable: a time budget may shorten the run, and the schedule with it
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total[0]) / total[0]))
    )

    # Fill the buffer once (in chunks: one huge render would not fit), then keep replacing its
    # oldest images.
    chunks = [
        sample_batch(min(512, buffer_size - i), generator, device, cfg=world)
        for i in range(0, buffer_size, 512)
    ]
    buffer = {"images": torch.cat([c[0] for c in chunks])}
    for key in ("shape", "color", "mode"):
        buffer[key] = torch.cat([c[2][key] for c in chunks])
    del chunks
    cursor = 0
    start = time.perf_counter()
    model.train()
    step = 0
    while step < total[0]:
        if time_budget_s is not None and step == 50:
            per_step = (time.perf_counter() - start) / 50
            total[0] = max(51, min(steps, int(time_budget_s / per_step)))
            if log is not None:
                log(f"{per_step * 1000:.0f} ms per step: training for {total[0]} steps")
        if fresh_per_step > 0:
            new, _, new_labels = sample_batch(fresh_per_step, generator, device, cfg=world)
            slots = (torch.arange(fresh_per_step) + cursor) % buffer_size
            slots = slots.to(device)
            buffer["images"][slots] = new
            for key in ("shape", "color", "mode"):
                buffer[key][slots] = new_labels[key]
            cursor = (cursor + fresh_per_step) % buffer_size
        pick = torch.randint(buffer_size, (batch_size,), generator=generator).to(device)
        batch = augment(buffer["images"][pick], noise_generator)
        loss = classifier_loss(model(batch), {k: buffer[k][pick] for k in ("shape", "color", "mode")})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None and (step % log_every == 0 or step == total[0] - 1):
            log(f"step {step:6d}  loss {loss.item():.4f}  {time.perf_counter() - start:7.1f} s")
        step += 1
    model.steps_trained = step
    return model.eval()


@torch.no_grad()
def evaluate_classifier(
    model: WorldClassifier,
    n: int = 3000,
    seed: int = 12345,
    device: str | torch.device = "cpu",
    batch: int = 500,
    world: WorldConfig | None = None,
) -> dict:
    """Held-out accuracy on `n` fresh renders (a seed the training never uses).

    Returns {"shape": {name: accuracy}, "color": {name: accuracy on colored images},
    "overall": {"shape", "color", "mode"}, "n": n}. Color accuracy counts only albedo and
    lambertian images (a textureless image has no color to name).
    """
    generator = torch.Generator().manual_seed(seed)
    truth: dict[str, list[Tensor]] = {"shape": [], "color": [], "mode": []}
    guess: dict[str, list[Tensor]] = {"shape": [], "color": [], "mode": []}
    for start in range(0, n, batch):
        images, _, labels = sample_batch(min(batch, n - start), generator, device, cfg=world)
        predicted = classify(model, images)
        for key in truth:
            truth[key].append(labels[key].cpu())
            guess[key].append(predicted[key].cpu())
    t = {k: torch.cat(v) for k, v in truth.items()}
    g = {k: torch.cat(v) for k, v in guess.items()}
    colored = t["mode"] != TEXTURELESS
    return {
        "n": n,
        "seed": seed,
        "overall": {
            "shape": (g["shape"] == t["shape"]).float().mean().item(),
            "color": (g["color"] == t["color"])[colored].float().mean().item(),
            "mode": (g["mode"] == t["mode"]).float().mean().item(),
        },
        "shape": per_class_accuracy(g["shape"], t["shape"], SHAPE_NAMES),
        "color": per_class_accuracy(g["color"][colored], t["color"][colored], COLOR_NAMES),
    }


def per_class_accuracy(predicted: Tensor, truth: Tensor, names: tuple[str, ...]) -> dict[str, float]:
    """Accuracy per true class (NaN for a class without examples): (N,), (N,) -> {name: accuracy}."""
    out = {}
    for i, name in enumerate(names):
        mask = truth == i
        out[name] = (predicted[mask] == i).float().mean().item() if mask.any() else float("nan")
    return out


def _label_metadata() -> dict[str, str]:
    return {
        "shapes": json.dumps(list(SHAPE_NAMES)),
        "colors": json.dumps(list(COLOR_NAMES)),
        "modes": json.dumps(list(SHADING_MODES)),
    }


def save_classifier(model: WorldClassifier, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write float16 weights (half the size; accuracy unchanged) with the label names as metadata."""
    tensors = {
        k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {"format": "dreamfusion-world-classifier-v1", "width": str(model.width), **_label_metadata()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={**meta, **(extra or {})}))
    return Path(path)


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> WorldClassifier:
    """Load weights saved by `save_classifier` (default: the committed ones), in eval mode.

    Raises FileNotFoundError if there are none, ValueError if they were trained for another
    world (different shape, color or mode names).
    """
    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"no classifier weights at {path}; train them with `python -m dreamfusion.eval.train_classifier`"
        )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    for key, expected in _label_metadata().items():
        if meta.get(key) != expected:
            raise ValueError(
                f"classifier {path} was trained for other {key} ({meta.get(key)}); retrain it for this world"
            )
    model = WorldClassifier(int(meta["width"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.to(device).eval()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (recorded beside the accuracy table in docs/evaluation.md)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
