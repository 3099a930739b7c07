"""Training the prior on the procedural world, one straight path per step:

    world pool -> (image, caption, camera, shading mode) batch -> noise at a random t -> U-Net -> MSE
    -> AdamW -> EMA

Randomness: parameters are initialized from torch.manual_seed(seed); the pool's renders come from
per-block CPU generators (see data.py); batch rows, text and mode dropout, timesteps and noise come from one
generator on the device whose state is saved in every checkpoint. So a run resumed from a
checkpoint replays exactly the steps the uninterrupted run would have taken (bit for bit on CPU).

Run folder (`dreamfusion prior train --out RUN`):
    RUN/config.json                       the recipe (model + training), written once
    RUN/checkpoints/step_*.safetensors    model, EMA, optimizer, generator state
    RUN/metrics.jsonl                     one JSON object per logged step
    RUN/prior.safetensors (+ .sha256)     the EMA weights in float16, rewritten at every checkpoint
    RUN/samples.png                       a grid of samples when a segment ends (docs/prior.md)
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dreamfusion.errors import UserError
from dreamfusion.prior.model import PriorModel, save_prior
from dreamfusion.prior.text import PAD, START
from dreamfusion.prior.unet import UNKNOWN_MODE
from dreamfusion.prior_training.data import WorldPool, world_config
from dreamfusion.prior_training.recipes import PriorRecipe, recipe_to_dict
from dreamfusion.prior_training.sample import sample_prompts, save_grid
from dreamfusion.training import lifecycle
from dreamfusion.training.checkpoint import Checkpoint
from dreamfusion.training.optim import OptimConfig, lr_factor, set_lr
from dreamfusion.training.run_dir import RunDir
from dreamfusion.world.captions import NOUNS
from dreamfusion.world.objects import SHAPE_NAMES

FIT_STEPS = (20, 80)  # steps timed by `train(fit_minutes=...)`: after warm-up (and compilation)
FIT_RESERVE_S = 15.0  # seconds kept for the last checkpoint and the sample grid
RUN_PROMPT = "dreamfusion prior"  # the run folder's "prompt": marks the folder as a prior run
GRID_COLORS = ("red", "green", "blue", "yellow")


def build_optimizer(model: PriorModel, cfg: OptimConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and kernels only (not on norms, biases, embeddings)."""
    decay = [
        p for n, p in model.named_parameters() if p.dim() > 1 and "embed" not in n and "position" not in n
    ]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": rest, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)


def diffusion_loss(
    model: PriorModel,
    x0: torch.Tensor,  # (B, 3, H, W) in [-1, 1]
    tokens: torch.Tensor,  # (B, L) token ids
    camera: torch.Tensor,  # (B, CAMERA_WIDTH) camera_features
    mode: torch.Tensor | None,  # (B,) shading mode index, or None (unknown)
    t: torch.Tensor,  # (B,) long
    noise: torch.Tensor,  # (B, 3, H, W)
    forward=None,
    channels_last: bool = False,
) -> torch.Tensor:
    """The denoising loss: mean squared error of the U-Net's output against its target (the noise,
    or v = alpha eps - sigma x0) at z_t = alpha_t x0 + sigma_t noise. `forward` replaces model's
    own call (a torch.compile'd model); the MSE is taken in float32 under autocast too."""
    alphabar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    z = alphabar.sqrt() * x0 + (1.0 - alphabar).sqrt() * noise
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    pred = (forward or model)(z, t, model.text(tokens), camera, mode)
    return F.mse_loss(pred.float(), model.target(x0, noise, t).float())


def grid_prompts() -> list[str]:
    """Every shape in four colors (rows), canonical nouns, no view suffix: the end-of-segment grid."""
    return [f"a {color} {NOUNS[shape][0]}" for color in GRID_COLORS for shape in SHAPE_NAMES]


@dataclass
class StepStats:
    """Sums over the steps since the last log line, kept on the device (no sync per step)."""

    loss: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)


class PriorTrainer(lifecycle.Stoppable):
    """Trains a PriorModel from a recipe into a run folder; `train()` runs until done or out of time."""

    def __init__(self, recipe: PriorRecipe, out: Path, resume: bool = False, compile: bool = False) -> None:
        tc = recipe.train
        if tc.steps <= 0 or tc.batch_size <= 0:
            raise UserError(f"steps and batch size must be positive (got {tc.steps}, {tc.batch_size})")
        if not 0.0 <= tc.timestep_range[0] < tc.timestep_range[1] <= 1.0:
            raise UserError(f"timestep_range must satisfy 0 <= lo < hi <= 1 (got {tc.timestep_range})")
        if not 0.0 <= tc.timestep_range_share <= 1.0:
            raise UserError(f"timestep_range_share must be in [0, 1] (got {tc.timestep_range_share})")
        self.recipe, self.cfg = recipe, tc
        self.device = lifecycle.resolve_device(tc.device)
        self.run = RunDir(Path(out))
        self.run.prepare(RUN_PROMPT, recipe_to_dict(recipe), resume)

        torch.manual_seed(tc.seed)  # parameter initialization only
        self.model = PriorModel(recipe.model).to(self.device)
        if tc.channels_last:
            self.model.unet.to(memory_format=torch.channels_last)
        if tc.init and not resume:
            self._load_init(Path(tc.init), recipe)
        self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.optimizer = build_optimizer(self.model, tc.optim, fused=self.device.type == "cuda")
        self.gen = torch.Generator(self.device).manual_seed(tc.seed + 1)
        self.step, self.elapsed = 0, 0.0
        self.forward = torch.compile(self.model) if compile else self.model
        self.pool = WorldPool(
            tc.pool_size,
            tc.render_batch,
            tc.render_every,
            self.model.tokenizer,
            world_config(
                recipe.model.unet.image_size,
                tc.world_supersample,
                tc.world_march_steps,
                tc.view_suffix_probability,
            ),
            tc.seed,
            self.device,
            tc.objects,
            tc.colors,
        )
        empty = [START] + [PAD] * (recipe.model.max_tokens - 1)
        self.empty_tokens = torch.tensor(empty, device=self.device)  # (L,) the unconditional prompt
        if resume:
            self._resume()
        self.run.write_config(RUN_PROMPT, recipe_to_dict(recipe))
        self.pool.fill(self.step)
        self.interrupt = lifecycle.Interrupt()

    # ----------------------------------------------------------------------------------- one step
    def _autocast(self):
        if self.device.type != "cuda" or self.cfg.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def _timesteps(self, B: int) -> torch.Tensor:
        """(B,) long: a timestep_range_share of the batch from timestep_range, the rest from all of [0, T)."""
        T, (lo, hi), gen = self.model.cfg.num_train_timesteps, self.cfg.timestep_range, self.gen
        low = round(lo * T)
        high = max(round(hi * T), low + 1)
        ranged = torch.randint(low, high, (B,), generator=gen, device=self.device)
        if self.cfg.timestep_range_share >= 1.0:  # draws as runs made before the share existed
            return ranged
        anywhere = torch.randint(T, (B,), generator=gen, device=self.device)
        share = torch.rand(B, generator=gen, device=self.device) < self.cfg.timestep_range_share
        return torch.where(share, ranged, anywhere)

    def train_step(self, stats: StepStats) -> None:
        tc, model, gen = self.cfg, self.model, self.gen
        self.pool.advance(self.step)
        B = tc.batch_size
        rows = torch.randint(self.pool.size, (B,), generator=gen, device=self.device)
        x0, tokens, camera, mode = self.pool.batch(rows)  # (B, 3, H, W), (B, L), (B, CAMERA_WIDTH), (B,)
        drop = torch.rand(B, generator=gen, device=self.device) < tc.text_dropout
        tokens = torch.where(drop[:, None], self.empty_tokens, tokens)  # CFG: learn the unconditional model
        hide = torch.rand(B, generator=gen, device=self.device) < tc.mode_dropout
        mode = torch.where(hide, UNKNOWN_MODE, mode)  # learn "any shading", the input SDS gives
        t = self._timesteps(B)
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        with self._autocast():
            loss = diffusion_loss(model, x0, tokens, camera, mode, t, noise, self.forward, tc.channels_last)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), tc.optim.grad_clip_norm or float("inf")
        )
        set_lr(self.optimizer, lr_factor(self.step, tc.steps, tc.optim))
        self.optimizer.step()
        # EMA with a short horizon early on (the first weights are noise), tc.ema_decay later.
        decay = min(tc.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        params = dict(model.named_parameters())
        torch._foreach_lerp_(list(self.ema.values()), [params[n].detach() for n in self.ema], 1.0 - decay)
        self.step += 1
        stats.loss = loss.detach() if stats.loss is None else stats.loss + loss.detach()
        stats.grad_norm = grad_norm if stats.grad_norm is None else stats.grad_norm + grad_norm
        stats.steps += 1

    # -------------------------------------------------------------------------------- the loop
    def train(self, max_minutes: float = 0.0, fit_minutes: float = 0.0) -> Path:
        """Train until `steps`, Ctrl-C, or `max_minutes` of wall time in this call (0: no limit);
        saves a checkpoint and the EMA weights on the way out. Returns RUN/prior.safetensors.

        `fit_minutes` (fresh runs only): time steps FIT_STEPS, then set `steps` so that the whole run
        takes about that long on this machine; it is set before warm-up ends, so no learning rate
        already used changes, and the cosine decay then ends on time.
        """
        start = time.perf_counter()
        fit = fit_minutes > 0 and self.step < FIT_STEPS[0]
        stats, reason, fit_start = StepStats(), "done", start
        running = lifecycle.running(
            self.run, self.interrupt, self.cfg.steps, self.step, self.cfg.progress, "prior"
        )
        try:
            with running as bar:
                while self.step < self.cfg.steps:
                    self.train_step(stats)
                    bar.update(1)
                    if fit and self.step == FIT_STEPS[0]:
                        _sync(self.device)
                        fit_start = time.perf_counter()
                    if fit and self.step == FIT_STEPS[1]:
                        self._fit_steps(fit_minutes, start, fit_start)
                        bar.total = self.cfg.steps
                    if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                        record = self._log(stats, time.perf_counter() - start)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", it_s=f"{record['steps_per_s']:.1f}")
                        stats = StepStats()
                    if self.step % self.cfg.checkpoint_every == 0:
                        self.save()
                        if not self.cfg.progress:
                            seconds = time.perf_counter() - start
                            print(f"step {self.step}/{self.cfg.steps}: checkpoint saved ({seconds:.0f} s)")
                    if self._stop_requested:
                        reason = "interrupted"
                        break
                    if max_minutes > 0 and time.perf_counter() - start > 60.0 * max_minutes:
                        reason = "time budget reached"
                        break
        finally:
            self.elapsed += time.perf_counter() - start
        self.save()
        if self.cfg.sample_steps > 0:
            # Rows: the four colors lit (lambertian), then the same prompts with any shading (as SDS asks).
            images = torch.cat([self.sample(grid_prompts(), "lambertian"), self.sample(grid_prompts())])
            save_grid(self.run.path / "samples.png", images, columns=len(SHAPE_NAMES), scale=2)
        if reason != "done":
            print(f"{reason} at step {self.step}/{self.cfg.steps}; continue with --resume")
        return self.run.path / "prior.safetensors"

    def _fit_steps(self, minutes: float, start: float, fit_start: float) -> None:
        """Set the run's length from the rate of the timed steps; recorded in RUN/config.json, so a
        resumed run keeps it."""
        _sync(self.device)
        now = time.perf_counter()
        rate = (FIT_STEPS[1] - FIT_STEPS[0]) / (now - fit_start)
        left = 60.0 * minutes - (now - start) - FIT_RESERVE_S
        steps = self.step + max(1, int(rate * left))
        print(f"{rate:.2f} steps/s: training for {steps} steps, about {minutes:g} minutes")
        self.cfg = dataclasses.replace(self.cfg, steps=steps)
        self.recipe = dataclasses.replace(self.recipe, train=self.cfg)
        self.run.write_config(RUN_PROMPT, recipe_to_dict(self.recipe))

    def _log(self, stats: StepStats, segment_seconds: float) -> dict[str, Any]:
        seconds = time.perf_counter() - stats.start
        record = {
            "step": self.step,
            "loss": float(stats.loss) / stats.steps,
            "grad_norm": float(stats.grad_norm) / stats.steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "steps_per_s": stats.steps / max(seconds, 1e-9),
            "elapsed_s": round(self.elapsed + segment_seconds, 2),
        }
        self.run.log_metrics(record)
        return record

    # ------------------------------------------------------------------------ saving, sampling
    def ema_model(self) -> PriorModel:
        """A frozen copy of the model holding the EMA weights, on the training device."""
        model = PriorModel(self.recipe.model).to(self.device)
        model.load_state_dict({**model.state_dict(), **self.ema})
        return model.eval().requires_grad_(False)

    def sample(self, prompts: list[str], mode: str | None = None) -> torch.Tensor:
        """One EMA sample per prompt, (N, 3, H, W) in [0, 1]; `mode` a shading mode or None (any)."""
        return sample_prompts(
            self.ema_model(),
            prompts,
            seed=0,
            steps=self.cfg.sample_steps,
            guidance_scale=self.cfg.sample_guidance_scale,
            mode=mode,
        )

    def save(self) -> Path:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        tensors["rng.device"] = self.gen.get_state().cpu()
        path = lifecycle.save(
            self.run,
            self.step,
            RUN_PROMPT,
            recipe_to_dict(self.recipe),
            tensors,
            {"elapsed_s": self.elapsed},
            keep=self.cfg.keep_checkpoints,
            optimizer=self.optimizer,
        )
        save_prior(self.model, self.run.path / "prior.safetensors", state=self._ema_state())
        return path

    def _load_init(self, path: Path, recipe: PriorRecipe) -> None:
        from dreamfusion.prior.model import PriorFileError, load_prior

        try:
            start = load_prior(path)
        except PriorFileError as e:
            raise UserError(f"--init: {e}") from None
        grown = {"ray_channels", "camera_text_width"}  # inputs a recipe may add to trained weights
        mine, theirs = recipe.model.unet, start.cfg.unet
        same_rest = dataclasses.replace(
            recipe.model, unet=dataclasses.replace(mine, **{k: getattr(theirs, k) for k in grown})
        )
        if any(getattr(theirs, k) not in (0, getattr(mine, k)) for k in grown) or (
            same_rest.to_dict() != start.cfg.to_dict()
        ):
            raise UserError(
                f"--init: {path} holds a prior of another architecture than this recipe's; "
                "start from weights trained with the same --preset"
            )
        weights = start.state_dict()
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name not in weights:  # a module the start lacks keeps its (zero-output) init
                    continue
                source = weights[name].to(param.device)
                if source.shape == param.shape:
                    param.copy_(source)
                else:  # conv_in of a prior without rays: the ray channels start at zero
                    param.zero_()[:, : source.shape[1]].copy_(source)

    def _ema_state(self) -> dict[str, torch.Tensor]:
        return {**self.model.state_dict(), **self.ema}

    def _resume(self) -> None:
        def restore(ckpt: Checkpoint) -> None:
            self.model.load_state_dict(lifecycle.to_device(ckpt.section("model"), self.device))
            ema = ckpt.section("ema")
            if set(ema) != set(self.ema):
                raise KeyError("EMA weights do not match the model")
            self.ema = {k: ema[k].to(self.device) for k in self.ema}
            if not lifecycle.restore_optimizer(self.optimizer, ckpt):
                raise KeyError("it holds no optimizer state")
            match_parameter_layout(self.optimizer)
            self.gen.set_state(ckpt.tensors["rng.device"])

        ckpt = lifecycle.resume(self.run, restore, "this recipe")
        self.step = ckpt.step
        self.elapsed = float(ckpt.meta.get("elapsed_s", 0.0))


def match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter optimizer tensor its parameter's strides.

    Checkpoints store tensors contiguous, so the moments of a channels_last convolution come back
    in the default layout, which CUDA's fused AdamW refuses ("must have same dtype, device, and
    layout"). Values are unchanged.
    """
    for param, state in optimizer.state.items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
