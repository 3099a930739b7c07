"""The training loop, one straight path per step:

    camera -> rays -> field -> shading -> image -> guidance (SDS) -> loss -> optimizer

Everything random draws from two generators owned by the trainer (one on the CPU for cameras and
shading choices, one on the device for ray jitter, timesteps and noise). Their states are saved in
every checkpoint, so a resumed run replays exactly the draws the uninterrupted run would have made.
The occupancy grid (empty-space skipping, `render.occupancy_grid`) is saved too; its refreshes draw
from a generator seeded by the step, so the grid on or off leaves every other draw unchanged.

The loss is objective.py's; saving, resuming, Ctrl-C and the progress bar are lifecycle.py's. A
finished run's last checkpoint holds the weights without Adam's moments (they only serve to go on),
in half precision (checkpoint.narrow); every checkpoint before it is whole, so an interrupted run
resumes to the bit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from dreamfusion.atomic import atomic_write
from dreamfusion.config import Config, to_dict, validate_config
from dreamfusion.errors import UserError
from dreamfusion.fields import build_background, build_field
from dreamfusion.fields.background import ConstantBackground
from dreamfusion.guidance.base import Guidance, LatentGuidance
from dreamfusion.render.occupancy import OccupancyGrid
from dreamfusion.render.renderer import render, render_views
from dreamfusion.render.shading import choose_shading
from dreamfusion.render.volume import composite, normal_latent
from dreamfusion.scene.cameras import Cameras, orbit_cameras, sample_cameras, to_device
from dreamfusion.scene.prompts import view_index, view_prompts
from dreamfusion.training import lifecycle
from dreamfusion.training.checkpoint import Checkpoint, checkpoint_bytes
from dreamfusion.training.health import Health
from dreamfusion.training.objective import interior_term, render_loss, weights_at
from dreamfusion.training.optim import build_optimizer, lr_factor, set_lr
from dreamfusion.training.run_dir import RunDir, save_image_grid

log = logging.getLogger("dreamfusion")

METRICS = ("loss", "sds", "sds_grad", "orientation", "distortion", "opacity", "t")


def read_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A step's statistics as Python numbers (waits for the device to finish the step)."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}


class Trainer(lifecycle.Stoppable):
    """Optimizes a field so that its renders score well under a frozen guidance model."""

    def __init__(self, prompt: str, cfg: Config, run_dir: Path, guidance: Guidance, resume: bool = False):
        if not prompt.strip():
            raise UserError('the prompt is empty; give a sentence such as "a ceramic mug"')
        validate_config(cfg)
        # Steps whose render is the guidance's latent (normal map and opacity, no VAE).
        self._latent_steps = round(cfg.guidance.latent_warmup * cfg.train.steps)
        if self._latent_steps and not isinstance(guidance, LatentGuidance):
            raise UserError(
                f"guidance.latent_warmup needs a latent model (stable-diffusion); '{cfg.guidance.name}' "
                "scores pixels: leave guidance.latent_warmup at 0"
            )
        self.prompt = prompt.strip()
        self.cfg = cfg
        self.device = lifecycle.resolve_device(cfg.train.device)
        if self.device.type == "cuda":
            if self.device.index is not None:  # CUDA graphs and streams follow the current device
                torch.cuda.set_device(self.device)
            # The guidance's convolutions (a VAE, a U-Net) see the same shapes every step: let cuDNN
            # time its algorithms once and keep the fastest (the GPU benchmarks run so too).
            torch.backends.cudnn.benchmark = True
        self.run = RunDir(Path(run_dir))
        if cfg.train.tensorboard:
            self.run.check_tensorboard()
        self.guidance = guidance
        try:  # before the run folder is touched: a prompt the model cannot read leaves nothing behind
            self.embeddings = guidance.embed(
                view_prompts(self.prompt, bottom=cfg.camera.bottom_view_below is not None)
            )
        except ValueError as e:
            raise UserError(str(e)) from None
        resume = self.run.prepare(self.prompt, to_dict(cfg), resume, defaults=to_dict(Config()))

        with torch.random.fork_rng(devices=[]):  # seed the initialization without touching the caller's RNG
            torch.manual_seed(cfg.train.seed)
            self.field = build_field(cfg.field).to(self.device)
            self.background = build_background(cfg.background).to(self.device)
        self._black = ConstantBackground((0.0, 0.0, 0.0)).to(self.device)
        self.occupancy: OccupancyGrid | None = None
        if cfg.render.occupancy_grid:
            self.occupancy = OccupancyGrid(
                cfg.field.bound_radius,
                cfg.render.occupancy_resolution,
                cfg.render.occupancy_threshold,
                cfg.render.occupancy_decay,
            ).to(self.device)
        self.optimizer = build_optimizer(self.field, self.background, cfg.optim)
        self.run.check_space(checkpoint_bytes(self.field, self.background, self.occupancy))
        self.cpu_gen = torch.Generator().manual_seed(cfg.train.seed)
        self.device_gen = torch.Generator(self.device).manual_seed(cfg.train.seed + 1)
        self.step = 0
        self._first_step = 0
        self.health = Health(self.device, cfg.train.stall_steps)
        self.elapsed = 0.0
        self.timer = lifecycle.StepTimer(self.device, cfg.train.profile)
        self.interrupt = lifecycle.Interrupt()
        if resume:
            self._resume()
        self.run.write_config(self.prompt, to_dict(cfg))  # only once the run is known to be sound

    # ----------------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, Any]:
        cfg, timer = self.cfg, self.timer
        # Nothing in a step waits for the GPU except the occupancy grid's compaction of samples:
        # inputs drawn on the CPU go over without a sync, the statistics stay on the device, and a
        # non-finite step is dropped by the optimizer itself, so the CPU queues kernels ahead.
        cameras = sample_cameras(cfg.train.batch_size, cfg.camera, self.cpu_gen)
        shading = choose_shading(self.step, cfg.shading, self.cpu_gen)
        latent = self.step < self._latent_steps
        if latent:  # the render's normals and opacity are the latent: its colors are not used
            shading = "albedo"
        prompt_index = to_device(
            view_index(cameras.elevation, cameras.azimuth, bottom_below=cfg.camera.bottom_view_below),
            self.device,
        )
        cameras = cameras.to(self.device)
        weights = weights_at(self.step, cfg.regularizers)
        need_normals = latent or shading != "albedo" or weights.orientation > 0
        if self.occupancy is not None and self._occupancy_due():
            with timer("occupancy"):
                self.occupancy.update(self.field, self._occupancy_generator())

        # Views go through in micro-batches whose gradients add up to the whole batch's: the loss of
        # each is an average over its views, so it is weighted by its share of the batch.
        self.optimizer.zero_grad(set_to_none=True)
        batch, micro = len(cameras), cfg.train.micro_batch or len(cameras)
        sums = dict.fromkeys(METRICS, 0.0)
        loss_finite = torch.ones((), dtype=torch.bool, device=self.device)
        evaluated = 0
        for start in range(0, batch, micro):
            part = cameras[start : start + micro]
            share = len(part) / batch
            with timer("render"), self._autocast():
                out = render(
                    self.field,
                    self._black if cfg.background.kind == "random" else self.background,
                    part,
                    shading,
                    cfg.render,
                    cfg.shading,
                    generator=self.device_gen,
                    compute_normals=need_normals,
                    occupancy=self.occupancy,
                )
            evaluated += out.samples_evaluated
            if latent:
                image = normal_latent(out.normal.float(), out.alpha.float())  # (b, 4, H, W)
                score = self.guidance.sds_loss_latent
            else:
                image = out.image.float()  # (b, 3, H, W)
                if cfg.background.kind == "random":
                    colors = to_device(torch.rand(len(part), 3, 1, 1, generator=self.cpu_gen), self.device)
                    image = composite(image, out.alpha.float(), colors)  # over black, image is premultiplied
                score = functools.partial(self.guidance.sds_loss, shading=shading)
            with timer("guidance"):
                sds = score(
                    image,
                    self.embeddings,
                    prompt_index[start : start + micro],
                    part,
                    self.device_gen,
                    self.step / cfg.train.steps,
                )
            terms = render_loss(sds.loss, out, weights)
            loss = terms.total
            with timer("backward"):
                # Only the parameters' gradients: the sample points are leaves that require grad
                # (normals are the density's gradient at them), and without `inputs` the backward
                # would also work out the second derivatives at every point, which nothing reads.
                (loss * share).backward(inputs=self._params())
            loss_finite = loss_finite & torch.isfinite(loss.detach())
            for key, value in (
                ("loss", loss),
                ("sds", sds.loss),
                ("sds_grad", sds.grad_norm),
                ("orientation", terms.value("orientation")),
                ("distortion", terms.value("distortion")),
                ("opacity", out.alpha.mean()),
                ("t", sds.timesteps.float().mean()),
            ):
                sums[key] += share * value.detach().float()
        sums["interior"] = self._interior_step(weights.interior, loss_finite)

        with timer("optimizer"):
            lr = set_lr(self.optimizer, lr_factor(self.step, cfg.train.steps, cfg.optim))
            skipped = self._optimizer_step(loss_finite)
        self.health.record(skipped, sums["sds_grad"])
        self.step += 1
        extra = {}
        if self.occupancy is not None:
            total = batch * cfg.camera.resolution**2 * cfg.render.samples_per_ray
            extra = {"occupied": self.occupancy.occupied_fraction(), "evaluated": evaluated / total}
        # The statistics are 0-dim tensors on the device: reading one (float(), formatting) waits
        # for the step to finish, so the loop reads them only when it logs.
        shading = "latent" if latent else shading
        return {"step": self.step, **sums, "shading": shading, "lr": lr, "skipped": skipped, **extra}

    def _interior_step(self, weight: float, loss_finite: torch.Tensor) -> torch.Tensor:
        """Backpropagate `weight` times the interior loss (objective.interior_term); returns the
        loss, 0 when there is none this step. Flags a non-finite loss."""
        with self.timer("interior"), self._autocast():
            loss = interior_term(self.field, self.occupancy, self.cfg.regularizers, self.device_gen)
            if loss is None:
                return torch.zeros((), device=self.device)
            (weight * loss).backward(inputs=self._params())
        loss_finite &= torch.isfinite(loss.detach())
        return loss.detach()

    def _occupancy_due(self) -> bool:
        since = self.step - self.cfg.render.occupancy_warmup_steps
        return since >= 0 and since % self.cfg.render.occupancy_update_every == 0

    def _occupancy_generator(self) -> torch.Generator:
        # Seeded by the step rather than drawn from the run's generators: a resumed run reads the
        # grid at the same points without more saved state, and the grid on or off leaves every
        # other random draw of the run unchanged.
        seed = (self.cfg.train.seed * 1_000_003 + self.step) % 2**63
        return torch.Generator(self.device).manual_seed(seed)

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _optimizer_step(self, loss_finite: torch.Tensor) -> torch.Tensor:
        """Update the parameters unless the loss or a gradient is non-finite (one bad draw must not
        poison the field: its update is dropped and training goes on). Returns whether the update was
        dropped, a bool tensor on the device."""
        grads = [p.grad for p in self._params() if p.grad is not None]
        found_inf = (~loss_finite).float()
        if grads:
            # GradScaler's check: one fused kernel sets found_inf where any gradient is inf or NaN.
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones_like(found_inf))
        if self.cfg.optim.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self._params(), self.cfg.optim.grad_clip_norm)
        if getattr(self.optimizer, "_step_supports_amp_scaling", False):
            # Fused Adam (CUDA) reads `found_inf` and leaves parameters and moments as they were.
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
        elif not found_inf.item():  # the CPU waits for nothing
            self.optimizer.step()
        return found_inf.bool()

    def _autocast(self):
        dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.train.dtype]
        if dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    # -------------------------------------------------------------------------------- the loop
    def train(self) -> Path:
        """Run until `train.steps`; returns the final checkpoint's path. Ctrl-C saves and stops."""
        cfg = self.cfg.train
        saved = None
        previewed: tuple[int, Path] | None = None  # the last preview: step, file
        with lifecycle.running(
            self.run, self.interrupt, cfg.steps, self.step, cfg.progress, "dreamfusion"
        ) as bar:
            if cfg.tensorboard:
                self.run.open_tensorboard()
            while self.step < cfg.steps:
                start = time.perf_counter()
                metrics = self.train_step()
                self.elapsed += time.perf_counter() - start
                bar.update(1)
                last = self.step == cfg.steps
                if lifecycle.due(self.step, cfg.log_every) or last:
                    metrics = read_metrics(metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", shading=metrics["shading"][:5])
                    self.run.log_metrics(
                        {**metrics, "elapsed_s": round(self.elapsed, 3), "timings": self.timings()}
                    )
                    self.report_skipped()
                    self.health.check_stall(self.step)
                elif lifecycle.due(self.step, cfg.stall_steps):
                    self.health.check_stall(self.step)
                if lifecycle.due(self.step, cfg.preview_every):
                    previewed = (self.step, self.save_preview())
                if lifecycle.due(self.step, cfg.checkpoint_every) or last:
                    saved = self.save(final=last)
                if self._stop_requested and not last:  # at the last step the run is done anyway
                    saved = self.save()
                    bar.write(f"interrupted at step {self.step}; checkpoint saved, resume with --resume")
                    raise KeyboardInterrupt
        if saved is None:  # already finished on resume
            saved = self.run.latest_checkpoint()
        if previewed is not None and previewed[0] == self.step:  # the last step's preview: the same renders
            atomic_write(self.preview_path("final"), lambda tmp: shutil.copyfile(previewed[1], tmp))
        else:
            self.save_preview(name="final")
        return saved

    def timings(self) -> dict[str, float]:
        """Mean seconds per step of each phase so far in this process."""
        steps = max(1, self.step - self._first_step)
        return {k: round(v / steps, 5) for k, v in self.timer.totals.items()}

    @property
    def skipped_steps(self) -> int:
        """Steps whose update was dropped for a non-finite loss or gradient (waits for the device)."""
        return int(self.health.skipped)

    def report_skipped(self) -> None:
        """Warn once for steps dropped since the last report (the loop calls this when it logs)."""
        self.health.report_skipped(self.step)

    # ------------------------------------------------------------------------ previews, saving
    @torch.no_grad()
    def preview_images(self, n_views: int = 4) -> list[torch.Tensor]:
        res = self.cfg.train.preview_resolution
        cameras: Cameras = orbit_cameras(n_views, res, elevation=15.0, distance=1.3).to(self.device)
        rows = []
        for mode in ("albedo", "lambertian"):
            out = render_views(
                self.field,
                self.background,
                cameras,
                mode,
                self.cfg.render,
                self.cfg.shading,
                normals=mode != "albedo",  # an albedo image does not use them
            )
            rows.append(out.image.float().cpu())
        return rows

    def preview_path(self, name: str | None = None) -> Path:
        """previews/NAME.png, or the current step's preview without a name."""
        return self.run.previews / f"{name or f'step_{self.step:07d}'}.png"

    def save_preview(self, name: str | None = None) -> Path:
        return save_image_grid(self.preview_path(name), self.preview_images())

    def save(self, final: bool = False) -> Path:
        """Checkpoint the run. The `final` one holds the weights, the occupancy grid and the generator
        states but not Adam's moments (twice the weights, needed only to go on), stores its floats in
        half precision (renders from them stay within an 8-bit step of the float32 weights':
        docs/results.md), and older checkpoints go (unless train.keep_checkpoints keeps them all)."""
        tensors = {f"field.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update({f"background.{k}": v for k, v in self.background.state_dict().items()})
        if self.occupancy is not None:
            tensors.update({f"occupancy.{k}": v for k, v in self.occupancy.state_dict().items()})
        tensors["rng.cpu"] = self.cpu_gen.get_state()
        tensors["rng.device"] = self.device_gen.get_state().cpu()
        meta = {"skipped_steps": self.skipped_steps, "elapsed_s": self.elapsed}
        keep = self.cfg.train.keep_checkpoints
        return lifecycle.save(
            self.run,
            self.step,
            self.prompt,
            to_dict(self.cfg),
            tensors,
            meta,
            keep=min(keep, 1) if final else keep,
            optimizer=None if final else self.optimizer,
            lean=final,
        )

    def _resume(self) -> None:
        def restore(ckpt: Checkpoint) -> None:
            if ckpt.prompt != self.prompt:
                raise ValueError(f"it was trained on {ckpt.prompt!r}, not {self.prompt!r}")
            self.field.load_state_dict(lifecycle.to_device(ckpt.section("field"), self.device))
            self.background.load_state_dict(lifecycle.to_device(ckpt.section("background"), self.device))
            if self.occupancy is not None and ckpt.section("occupancy"):  # else all occupied until refreshed
                self.occupancy.load_state_dict(lifecycle.to_device(ckpt.section("occupancy"), self.device))
            if not lifecycle.restore_optimizer(self.optimizer, ckpt) and ckpt.step < self.cfg.train.steps:
                # A finished run's checkpoint: going on is a new segment of training, from its
                # weights as stored (rounded to half precision, read back as float32).
                log.warning(
                    "the run had finished at step %d and kept no optimizer state: Adam restarts fresh",
                    ckpt.step,
                )
            self.cpu_gen.set_state(ckpt.tensors["rng.cpu"])
            self.device_gen.set_state(ckpt.tensors["rng.device"])

        ckpt = lifecycle.resume(self.run, restore, "this run's model")
        self.step = self._first_step = ckpt.step
        self.health.resume(int(ckpt.meta.get("skipped_steps", 0)))
        self.elapsed = float(ckpt.meta.get("elapsed_s", 0.0))
