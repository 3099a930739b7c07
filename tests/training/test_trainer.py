"""The training loop: run folders, bit-exact resume, skipped non-finite steps."""

import dataclasses
import json
import logging

import pytest
import torch

from dreamfusion.api import GUIDANCE_BACKENDS, generate
from dreamfusion.guidance.base import SDSOutput
from dreamfusion.presets import smoke
from dreamfusion.render.renderer import render_views
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.training.checkpoint import load_checkpoint, narrow, save_checkpoint, widen
from dreamfusion.training.loading import load_run
from dreamfusion.training.trainer import Trainer, read_metrics
from tests.conftest import tiny_config


def _backend(cfg):
    return GUIDANCE_BACKENDS[cfg.guidance.name](cfg, torch.device("cpu"))


def _state(trainer):
    out = {f"field.{k}": v for k, v in trainer.field.state_dict().items()}
    out.update({f"bg.{k}": v for k, v in trainer.background.state_dict().items()})
    for i, s in trainer.optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


def test_run_folder_holds_config_checkpoint_previews_metrics(tmp_path):
    cfg = tiny_config(steps=6, preview_every=3, checkpoint_every=3, log_every=2)
    result = generate("a red sphere", out=tmp_path / "run", config=cfg)
    run = tmp_path / "run"
    assert result.run_dir == run and result.steps == 6
    saved = json.loads((run / "config.json").read_text())
    assert saved["prompt"] == "a red sphere" and saved["config"]["train"]["steps"] == 6
    # A finished run keeps its final checkpoint only, without the optimizer's state.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000006.safetensors"]
    final = load_checkpoint(run / "checkpoints" / "step_0000006.safetensors")
    assert final.section("field") and "rng.cpu" in final.tensors
    assert not final.section("optim") and "optim" not in final.meta
    assert result.checkpoint == run / "checkpoints" / "step_0000006.safetensors"
    assert {p.name for p in (run / "previews").iterdir()} == {
        "step_0000003.png",
        "step_0000006.png",
        "final.png",
    }
    # The last step's preview is the final one (the same renders): copied, not rendered again.
    previews = run / "previews"
    assert (previews / "final.png").read_bytes() == (previews / "step_0000006.png").read_bytes()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4, 6]
    assert all(set(m["timings"]) >= {"render", "guidance", "backward", "optimizer"} for m in lines)
    assert isinstance(result.field, torch.nn.Module)


@pytest.mark.parametrize("interrupt_at", [3, 4])
def test_resume_equals_uninterrupted_to_the_bit(tmp_path, interrupt_at):
    cfg = tiny_config(steps=8, checkpoint_every=100)
    cfg = dataclasses.replace(cfg, shading=dataclasses.replace(cfg.shading, albedo_warmup_steps=3))
    straight = Trainer("a red sphere", cfg, tmp_path / "a", _backend(cfg))
    straight.train()

    first = Trainer("a red sphere", cfg, tmp_path / "b", _backend(cfg))
    for _ in range(interrupt_at):
        first.train_step()
    first.save()
    del first
    resumed = Trainer("a red sphere", cfg, tmp_path / "b", _backend(cfg), resume=True)
    assert resumed.step == interrupt_at
    resumed.train()

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stop_request_saves_then_resumes(tmp_path):
    cfg = tiny_config(steps=5, checkpoint_every=100)
    trainer = Trainer("a red sphere", cfg, tmp_path / "run", _backend(cfg))
    trainer._stop_requested = True  # what Ctrl-C sets
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "run" / "checkpoints" / "step_0000001.safetensors").is_file()
    resumed = Trainer("a red sphere", cfg, tmp_path / "run", _backend(cfg), resume=True)
    resumed.train()
    assert resumed.step == 5


class _PoisonOnce:
    """Wraps a backend; its loss is NaN at one chosen call."""

    def __init__(self, inner, bad_call):
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def embed(self, prompts):
        return self.inner.embed(prompts)

    def sds_loss(self, images, *args, **kwargs):
        self.calls += 1
        out = self.inner.sds_loss(images, *args, **kwargs)
        if self.calls == self.bad_call:
            return SDSOutput(loss=out.loss * float("nan"), timesteps=out.timesteps, grad_norm=out.grad_norm)
        return out


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_non_finite_step_is_skipped_with_a_warning(tmp_path, caplog, device):
    # On CUDA the optimizer is fused and drops the update itself (found_inf), with no sync.
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: the fused optimizer's device-side skip is not exercised")
    cfg = tiny_config(steps=4)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    backend = GUIDANCE_BACKENDS[cfg.guidance.name](cfg, torch.device(device))
    trainer = Trainer("a red sphere", cfg, tmp_path / "run", _PoisonOnce(backend, bad_call=2))
    trainer.train_step()
    before = {k: v.clone() for k, v in _state(trainer).items()}
    metrics = trainer.train_step()
    assert isinstance(metrics["skipped"], torch.Tensor)  # on the device: nothing waited for it
    assert metrics["skipped"] and trainer.skipped_steps == 1
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        trainer.report_skipped()
        trainer.report_skipped()  # once per dropped step, not again
    assert caplog.text.count("non-finite") == 1 and "1 step(s) up to step 2" in caplog.text
    after = _state(trainer)  # parameters and Adam's moments and step count untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    trainer.train_step()  # and training goes on, changing the field again
    assert any(not torch.equal(before[k], v) for k, v in _state(trainer).items())
    assert not trainer.train_step()["skipped"]


def test_same_seed_same_result(tmp_path):
    cfg = tiny_config(steps=3)
    a = generate("a red sphere", out=tmp_path / "a", config=cfg)
    b = generate("a red sphere", out=tmp_path / "b", config=cfg)
    c = generate(
        "a red sphere",
        out=tmp_path / "c",
        config=dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1)),
    )
    sa, sb, sc = a.field.state_dict(), b.field.state_dict(), c.field.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


class _Quadratic:
    """A deterministic stand-in for a prior: pulls every pixel toward 0.3."""

    def embed(self, prompts):
        return None

    def sds_loss(self, images, embeddings, prompt_index, cameras, generator, progress, shading=None):
        loss = ((images - 0.3) ** 2).mean(dim=(1, 2, 3)).mean()
        return SDSOutput(loss=loss, timesteps=torch.zeros(len(images)), grad_norm=loss.detach())


def test_micro_batches_give_the_whole_batch_gradient(tmp_path):
    grads = []
    for micro in (0, 1, 2):
        cfg = tiny_config(steps=1, batch_size=4, micro_batch=micro)
        cfg = dataclasses.replace(
            cfg,
            render=dataclasses.replace(cfg.render, stratified=False),
            shading=dataclasses.replace(cfg.shading, albedo_warmup_steps=0),
        )
        trainer = Trainer("a red sphere", cfg, tmp_path / f"run{micro}", _Quadratic())
        trainer.optimizer.step = lambda: None  # keep the gradients of the step for comparison
        trainer.train_step()
        grads.append([p.grad.clone() for p in trainer._params() if p.grad is not None])
    for other in grads[1:]:
        assert len(other) == len(grads[0])
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


class _Recorder(_Quadratic):
    def __init__(self):
        self.images = []

    def sds_loss(self, images, *args, **kwargs):
        self.images.append(images.detach().clone())
        return super().sds_loss(images, *args, **kwargs)


def test_random_background_gives_each_view_its_own_color(tmp_path):
    cfg = tiny_config(steps=2, batch_size=3)
    cfg = dataclasses.replace(cfg, background=dataclasses.replace(cfg.background, kind="random"))
    recorder = _Recorder()
    trainer = Trainer("a red sphere", cfg, tmp_path / "run", recorder)
    trainer.train_step()
    trainer.train_step()
    corners = torch.cat([img[:, :, 0, 0] for img in recorder.images])  # (6, 3): rays that miss the field
    assert corners.min() >= 0.0 and corners.max() <= 1.0
    assert torch.cdist(corners, corners).add(torch.eye(6)).min() > 1e-3  # all six colors differ
    assert not torch.allclose(corners, torch.ones_like(corners))  # not the preview color (white)


def test_distortion_loss_joins_the_loss_when_weighted(tmp_path):
    """regularizers.distortion_weight > 0 adds the distortion loss to the step's loss (and logs
    it); at 0 it is not computed."""
    cfg = tiny_config(steps=1)
    on = dataclasses.replace(cfg, regularizers=dataclasses.replace(cfg.regularizers, distortion_weight=10.0))
    off_step = read_metrics(Trainer("a red sphere", cfg, tmp_path / "off", _backend(cfg)).train_step())
    on_step = read_metrics(Trainer("a red sphere", on, tmp_path / "on", _backend(on)).train_step())
    assert off_step["distortion"] == 0.0 and on_step["distortion"] > 0.0
    # Same seed, same render: the losses differ by exactly the weighted term.
    assert on_step["sds"] == pytest.approx(off_step["sds"], rel=1e-5)
    assert on_step["loss"] - off_step["loss"] == pytest.approx(10.0 * on_step["distortion"], rel=1e-4)


def test_optimizer_is_fused_on_cuda_only():
    """On CUDA, Adam runs its fused kernel (one launch for all tensors); on the CPU, PyTorch's default."""
    from dreamfusion.config import OptimConfig
    from dreamfusion.training.optim import build_optimizer

    def fused(device):
        field, background = torch.nn.Linear(3, 4).to(device), torch.nn.Linear(3, 3).to(device)
        return build_optimizer(field, background, OptimConfig()).defaults.get("fused")

    assert not fused("cpu")
    if not torch.cuda.is_available():
        pytest.skip("the CUDA half needs a GPU")
    assert fused("cuda") is True


def test_resuming_a_finished_run_does_nothing_or_goes_on_with_a_fresh_optimizer(tmp_path, caplog):
    cfg = tiny_config(steps=3)
    done = Trainer("a red sphere", cfg, tmp_path / "run", _backend(cfg))
    final = done.train()
    again = Trainer("a red sphere", cfg, tmp_path / "run", _backend(cfg), resume=True)
    assert again.step == 3 and again.train() == final
    # The final checkpoint holds the weights rounded to half precision; they come back as float32.
    for key, value in widen(*narrow(done.field.state_dict())).items():
        assert torch.equal(value, again.field.state_dict()[key]), key
        assert again.field.state_dict()[key].dtype == torch.float32

    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=5))
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        longer = Trainer("a red sphere", more, tmp_path / "run", _backend(more), resume=True)
    assert caplog.text.count("Adam restarts fresh") == 1
    assert longer.train().name == "step_0000005.safetensors" and longer.step == 5
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_0000005.safetensors"]


@pytest.fixture(scope="module")
def finished_smoke_run(tmp_path_factory):
    """A finished run of the smoke preset with the occupancy grid on, and its trainer."""
    cfg = smoke()
    render_cfg = dataclasses.replace(cfg.render, occupancy_grid=True, occupancy_resolution=16)
    cfg = dataclasses.replace(
        cfg, render=render_cfg, train=dataclasses.replace(cfg.train, progress=False, preview_every=0)
    )
    trainer = Trainer("a red sphere", cfg, tmp_path_factory.mktemp("smoke") / "run", _backend(cfg))
    return trainer, trainer.train()


def test_a_finished_run_keeps_its_final_checkpoint_in_half_precision(finished_smoke_run, tmp_path):
    from safetensors import safe_open

    trainer, final = finished_smoke_run
    with safe_open(str(final), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        stored_as = json.loads(f.metadata()["stored_as"])
    assert all(stored[k].dtype == torch.float16 for k in stored if k.startswith("field."))
    assert stored["occupancy.density"].dtype in (torch.float16, torch.bfloat16)
    assert stored_as["occupancy.mask"]["stored"] == "bits" and stored["occupancy.mask"].dtype == torch.uint8
    assert {k for k in stored_as} == {k for k in stored if not k.startswith("rng.")}
    assert torch.equal(stored["rng.cpu"], trainer.cpu_gen.get_state())  # exact: a resume replays it
    # The same tensors in float32, as every checkpoint before the last is written.
    ckpt = load_checkpoint(final)
    full = save_checkpoint(tmp_path / "full.safetensors", ckpt.step, ckpt.prompt, ckpt.config, ckpt.tensors)
    assert 0.45 < final.stat().st_size / full.stat().st_size < 0.55


def test_a_finished_run_loads_as_float32_modules_that_render_as_trained(finished_smoke_run):
    trainer, final = finished_smoke_run
    run = load_run(final.parent.parent)
    assert run.checkpoint_path == final
    assert all(p.dtype == torch.float32 for p in run.field.parameters())
    cameras = orbit_cameras(4, 24, elevation=15.0, distance=1.3)
    cfg = trainer.cfg
    for mode in ("albedo", "lambertian"):
        trained = render_views(
            trainer.field.eval(), trainer.background, cameras, mode, cfg.render, cfg.shading
        )
        loaded = render_views(run.field, run.background, cameras, mode, cfg.render, cfg.shading)
        assert (trained.image - loaded.image).abs().max() < 2e-3, mode
        assert (trained.alpha - loaded.alpha).abs().max() < 2e-3, mode
