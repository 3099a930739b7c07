"""The training loop, one straight path per step:

    camera -> rays -> field -> shading -> image -> guidance (SDS) -> loss -> optimizer

Everything random draws from two generators owned by the trainer (one on the CPU for cameras and
shading choices, one on the device for ray jitter, timesteps and noise). Their states are saved in
every checkpoint, so a resumed run replays exactly the draws the uninterrupted run would have made.
The occupancy grid (empty-space skipping, `render.occupancy_grid`) is saved too; its refreshes draw
from a generator seeded by the step, so the grid on or off leaves every other draw unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

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
from dreamfusion.training.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    checkpoint_path,
    flatten_optimizer,
    prune_checkpoints,
    save_checkpoint,
    unflatten_optimizer,
)
from dreamfusion.training.optim import build_optimizer, lr_factor, set_lr
from dreamfusion.training.regularizers import (
    distortion_loss,
    interior_loss,
    opacity_loss,
    orientation_loss,
    ramp,
)
from dreamfusion.training.run_dir import RunDir, save_image_grid

log = logging.getLogger("dreamfusion")


@dataclass
class StepTimer:
    """Wall time per phase; synchronizes CUDA around phases only when asked (it slows training)."""

    device: torch.device
    sync: bool
    totals: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def read_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A step's statistics as Python numbers (waits for the device to finish the step)."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}


def resolve_device(name: str) -> torch.device:
    """A torch.device, or a UserError when CUDA is asked for where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "CUDA was asked for (--device cuda) but this machine has no usable GPU; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device '{name}' is not supported; use cpu or cuda")
    return device


class Trainer:
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
        self.device = resolve_device(cfg.train.device)
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
        self._skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self._reported_skipped = 0
        self.elapsed = 0.0
        self.timer = StepTimer(self.device, cfg.train.profile)
        self._stop_requested = False
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
        orientation_w, opacity_w, interior_w = self._regularizer_weights()
        need_normals = latent or shading != "albedo" or orientation_w > 0
        if self.occupancy is not None and self._occupancy_due():
            with timer("occupancy"):
                self.occupancy.update(self.field, self._occupancy_generator())

        # Views go through in micro-batches whose gradients add up to the whole batch's: the loss of
        # each is an average over its views, so it is weighted by its share of the batch.
        self.optimizer.zero_grad(set_to_none=True)
        batch, micro = len(cameras), cfg.train.micro_batch or len(cameras)
        sums = dict.fromkeys(("loss", "sds", "sds_grad", "orientation", "distortion", "opacity", "t"), 0.0)
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
            loss = sds.loss + opacity_w * opacity_loss(out.alpha)
            distortion = torch.zeros((), device=self.device)
            if cfg.regularizers.distortion_weight > 0:
                distortion = distortion_loss(out.weights, out.t_mid, out.deltas)
                loss = loss + cfg.regularizers.distortion_weight * distortion
            orient = torch.zeros((), device=self.device)
            if out.sample_normals is not None and orientation_w > 0:
                orient = orientation_loss(out.weights, out.sample_normals, out.directions)
                loss = loss + orientation_w * orient
            with timer("backward"):
                (loss * share).backward()
            loss_finite = loss_finite & torch.isfinite(loss.detach())
            for key, value in (
                ("loss", loss),
                ("sds", sds.loss),
                ("sds_grad", sds.grad_norm),
                ("orientation", orient),
                ("distortion", distortion),
                ("opacity", out.alpha.mean()),
                ("t", sds.timesteps.float().mean()),
            ):
                sums[key] += share * value.detach().float()
        sums["interior"] = self._interior_step(interior_w, loss_finite)

        with timer("optimizer"):
            lr = set_lr(self.optimizer, lr_factor(self.step, cfg.train.steps, cfg.optim))
            skipped = self._optimizer_step(loss_finite)
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
        """Backpropagate `weight` (this step's, ramped) times the interior loss at points hidden inside
        the body (none until the occupancy grid's first refresh finds any); returns the loss, 0 when
        off. Flags a non-finite loss."""
        reg = self.cfg.regularizers
        if reg.interior_weight <= 0 or self.occupancy is None:
            return torch.zeros((), device=self.device)
        points = self.occupancy.interior_points(reg.interior_points, reg.interior_depth, self.device_gen)
        if points is None:
            return torch.zeros((), device=self.device)
        with self.timer("interior"), self._autocast():
            loss = interior_loss(self.field.density(points), reg.interior_density)
            (weight * loss).backward()
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

    def _regularizer_weights(self) -> tuple[float, float, float]:
        reg = self.cfg.regularizers
        return (
            ramp(self.step, reg.orientation_weight_start, reg.orientation_weight, reg.orientation_ramp_steps),
            ramp(self.step, reg.opacity_weight_start, reg.opacity_weight, reg.opacity_ramp_steps),
            ramp(self.step, reg.interior_weight_start, reg.interior_weight, reg.interior_ramp_steps),
        )

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
        self._skipped += found_inf.long()
        return found_inf.bool()

    @property
    def skipped_steps(self) -> int:
        """Steps whose update was dropped for a non-finite loss or gradient (reading it waits for the
        device)."""
        return int(self._skipped)

    def report_skipped(self) -> None:
        """Warn once for steps dropped since the last report (the loop calls this when it logs)."""
        skipped = self.skipped_steps
        if skipped > self._reported_skipped:
            log.warning(
                "%d step(s) up to step %d had a non-finite loss or gradient; their updates were skipped",
                skipped - self._reported_skipped,
                self.step,
            )
            self._reported_skipped = skipped

    def _autocast(self):
        dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.cfg.train.dtype]
        if dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    # -------------------------------------------------------------------------------- the loop
    def train(self) -> Path:
        """Run until `train.steps`; returns the final checkpoint's path. Ctrl-C saves and stops."""
        cfg = self.cfg.train
        previous = signal.getsignal(signal.SIGINT)
        if previous is not None and _in_main_thread():
            signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not cfg.progress,
            desc="dreamfusion",
            unit="step",
            dynamic_ncols=True,
        )
        last_ckpt = None
        if cfg.tensorboard:
            self.run.open_tensorboard()
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                metrics = self.train_step()
                self.elapsed += time.perf_counter() - start
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    metrics = read_metrics(metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", shading=metrics["shading"][:5])
                    self.run.log_metrics(
                        {**metrics, "elapsed_s": round(self.elapsed, 3), "timings": self.timings()}
                    )
                    self.report_skipped()
                if cfg.preview_every and self.step % cfg.preview_every == 0:
                    self.save_preview()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    last_ckpt = self.save()
                if self._stop_requested:
                    last_ckpt = self.save()
                    bar.write(f"interrupted at step {self.step}; checkpoint saved, resume with --resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()
            self.run.close()
            if _in_main_thread():
                signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if last_ckpt is None:  # already finished on resume
            last_ckpt = self.run.latest_checkpoint()
        self.save_preview(name="final")
        return last_ckpt

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True

    def timings(self) -> dict[str, float]:
        """Mean seconds per step of each phase so far in this process."""
        steps = max(1, self.step - getattr(self, "_first_step", 0))
        return {k: round(v / steps, 5) for k, v in self.timer.totals.items()}

    # ------------------------------------------------------------------------ previews, saving
    @torch.no_grad()
    def preview_images(self, n_views: int = 4) -> list[torch.Tensor]:
        res = self.cfg.train.preview_resolution
        cameras: Cameras = orbit_cameras(n_views, res, elevation=15.0, distance=1.3).to(self.device)
        rows = []
        for mode in ("albedo", "lambertian"):
            out = render_views(self.field, self.background, cameras, mode, self.cfg.render, self.cfg.shading)
            rows.append(out.image.float().cpu())
        return rows

    def save_preview(self, name: str | None = None) -> Path:
        path = self.run.previews / f"{name or f'step_{self.step:07d}'}.png"
        return save_image_grid(path, self.preview_images())

    def save(self) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"field.{k}": v for k, v in self.field.state_dict().items()})
        tensors.update({f"background.{k}": v for k, v in self.background.state_dict().items()})
        if self.occupancy is not None:
            tensors.update({f"occupancy.{k}": v for k, v in self.occupancy.state_dict().items()})
        optim_tensors, optim_rest = flatten_optimizer(self.optimizer.state_dict())
        tensors.update(optim_tensors)
        tensors["rng.cpu"] = self.cpu_gen.get_state()
        tensors["rng.device"] = self.device_gen.get_state().cpu()
        meta = {"optim": optim_rest, "skipped_steps": self.skipped_steps, "elapsed_s": self.elapsed}
        path = save_checkpoint(
            checkpoint_path(self.run.checkpoints, self.step),
            self.step,
            self.prompt,
            to_dict(self.cfg),
            tensors,
            meta,
        )
        prune_checkpoints(self.run.checkpoints, self.cfg.train.keep_checkpoints)
        return path

    def _resume(self) -> None:
        try:
            path, ckpt = self.run.resume_checkpoint()  # the newest that verifies
            if ckpt.prompt != self.prompt:
                raise CheckpointError(
                    f"checkpoint {path} was trained on {ckpt.prompt!r}, not {self.prompt!r}"
                )
            self.field.load_state_dict(_to(ckpt.section("field"), self.device))
            self.background.load_state_dict(_to(ckpt.section("background"), self.device))
            if self.occupancy is not None and ckpt.section("occupancy"):  # else all occupied until refreshed
                self.occupancy.load_state_dict(_to(ckpt.section("occupancy"), self.device))
            optim_state = unflatten_optimizer(ckpt.section("optim"), ckpt.meta["optim"])
            self.optimizer.load_state_dict(optim_state)
            self.cpu_gen.set_state(ckpt.tensors["rng.cpu"])
            self.device_gen.set_state(ckpt.tensors["rng.device"])
        except CheckpointError as e:
            raise UserError(f"cannot resume: {e}") from None
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot resume: checkpoint {path} does not match this run's model ({first})"
            ) from None
        self.step = ckpt.step
        self._first_step = ckpt.step
        self._reported_skipped = int(ckpt.meta.get("skipped_steps", 0))
        self._skipped.fill_(self._reported_skipped)
        self.elapsed = float(ckpt.meta.get("elapsed_s", 0.0))
        self.run.truncate_metrics(self.step)


def _to(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
