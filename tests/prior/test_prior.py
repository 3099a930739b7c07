"""The bundled prior on CPU: a tiny random-weight model built from a config, saved and loaded through
the same path users hit (load_prior / --guidance.model), then trained, resumed, sampled and
plugged into SDS and `dreamfusion.generate`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from dreamfusion.config import SDSConfig
from dreamfusion.errors import UserError
from dreamfusion.guidance.bundled import BundledGuidance, load_bundled
from dreamfusion.prior.experts import Experts
from dreamfusion.prior.model import PriorFileError, PriorModel, load_prior, save_prior, sha256_sidecar
from dreamfusion.prior.text import PAD, START
from dreamfusion.prior.unet import (
    AZIMUTH_HARMONICS,
    CAMERA_FEATURES,
    CAMERA_WIDTH,
    azimuth_harmonics,
    camera_features,
    camera_input,
    ray_map,
)
from dreamfusion.prior_training.recipes import tiny
from dreamfusion.prior_training.sample import ddim_sample, ddim_timesteps, prompt_cameras, sample_prompts
from dreamfusion.prior_training.train import PriorTrainer, build_optimizer, diffusion_loss
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.scene.prompts import view_prompts
from dreamfusion.training.checkpoint import list_checkpoints, load_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: on a shared 2-core machine one thread is several times faster than two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(seed: int = 0) -> PriorModel:
    """The tiny preset's model with every weight random (zero-initialized layers too), so its
    outputs depend on all of its inputs."""
    torch.manual_seed(seed)
    model = PriorModel(tiny().model)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prior") / "prior.safetensors"
    save_prior(random_model(), path)
    return path


def tiny_recipe(steps: int, **train):
    recipe = tiny()
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps, **train))


# ------------------------------------------------------------------------------ text, shapes
def test_tokenizer_ids_and_unknown_word_error(weights):
    model = load_prior(weights)
    tok = model.tokenizer
    ids = tok.encode(["A red cube, front view", ""])
    words = ["a", "red", "cube", ",", "front", "view"]
    assert ids[0].tolist() == [START] + [tok.ids[w] for w in words] + [PAD] * (tok.max_length - 7)
    assert ids[1].tolist() == [START] + [PAD] * (tok.max_length - 1)
    with pytest.raises(ValueError) as e:
        model.encode(["a ceramic mug"])
    message = str(e.value)
    assert "\n" not in message
    assert "'ceramic', 'mug'" in message and "torus" in message and "--guidance stable-diffusion" in message
    with pytest.raises(ValueError, match="at most"):
        tok.encode(["a red cube " * 10])


def test_camera_features_by_hand():
    c2w = torch.arange(16.0).reshape(1, 4, 4)
    f = camera_features(
        torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([1.0]), torch.tensor([1.2]), c2w
    )
    expected = [0.5, math.sqrt(3) / 2, 1.0, 0.0, -1.0, 0.6, 3.0 * math.log(1.2), *range(12), 1.2]
    assert f.shape == (1, CAMERA_WIDTH)
    assert torch.allclose(f[0], torch.tensor(expected), atol=1e-6)


def test_ray_map_by_hand():
    """A camera at (1, 0, 0) looking at the origin, +z up: its center ray is -x with no moment;
    at 2x2 the top-left pixel looks up (+z) and to the camera's left (-y), and o x d is its moment."""
    cams = orbit_cameras(1, 2, elevation=0.0, distance=1.0, focal_multiplier=0.5)
    center = ray_map(camera_input(cams), 1)[0, :, 0, 0]
    assert torch.allclose(center, torch.tensor([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), atol=1e-6)
    rays = ray_map(camera_input(cams), 2)  # focal 1 px at 2 px: pixel centers at +-0.5 / 1
    top_left = rays[0, :, 0, 0]
    d = torch.nn.functional.normalize(torch.tensor([-1.0, -0.5, 0.5]), dim=0)
    assert torch.allclose(top_left[:3], d, atol=1e-6)
    assert torch.allclose(top_left[3:], torch.linalg.cross(torch.tensor([1.0, 0.0, 0.0]), d), atol=1e-6)


def test_rays_tell_the_model_the_azimuth_the_features_do_not_carry():
    """Same embedding features, the camera turned 90 degrees about z: only the rays differ, and
    the prediction follows them (the way a prior can tell a cube's faces apart from its corners)."""
    model = random_model()
    cams = orbit_cameras(2, 16, elevation=20.0, distance=1.2)
    camera = camera_input(cams)
    turned = camera_input(orbit_cameras(2, 16, elevation=20.0, distance=1.2, azimuth_start=90.0))
    turned[:, :CAMERA_FEATURES] = camera[:, :CAMERA_FEATURES]
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    text = model.encode(["a red cube", "a red cube"])
    assert not torch.allclose(model(z, t, text, camera), model(z, t, text, turned))
    flat = PriorModel(
        dataclasses.replace(
            tiny().model, unet=dataclasses.replace(tiny().model.unet, ray_channels=0, camera_text_width=0)
        )
    )
    assert torch.equal(flat(z, t, text, camera), flat(z, t, text, turned))


def test_azimuth_harmonics_by_hand():
    cams = orbit_cameras(3, 16, azimuth_start=30.0)  # azimuths 30, 150, -90
    h = azimuth_harmonics(camera_input(cams))
    az = torch.deg2rad(torch.tensor([30.0, 150.0, -90.0]))
    k = torch.arange(2, AZIMUTH_HARMONICS + 1)
    expected = torch.cat([torch.sin(az[:, None] * k), torch.cos(az[:, None] * k)], dim=-1)
    assert h.shape == (3, 2 * (AZIMUTH_HARMONICS - 1))
    assert torch.allclose(h, expected, atol=1e-5)
    assert abs(float(h[0, 1]) - 1.0) < 1e-5  # sin(3 * 30 degrees)
    assert abs(float(h[2, 5]) - 1.0) < 1e-5  # cos(4 * -90 degrees): a cube looks the same


def test_camera_text_mlp_lets_a_turn_mean_something_per_object():
    """Without the camera-text MLP the embedding is a camera term plus a text term, so turning the
    camera shifts it by the same vector whatever the prompt; with it (output layer trained away
    from zero) the shift depends on the object."""
    cams, turned = orbit_cameras(1, 16), orbit_cameras(1, 16, azimuth_start=45.0)
    t = torch.tensor([500])

    def shifts(model: PriorModel) -> list[torch.Tensor]:
        out = []
        for prompt in ("a red cube", "a red sphere"):
            text = model.encode([prompt])
            e0 = model.unet.embedding(t, text, camera_input(cams))
            out.append(model.unet.embedding(t, text, camera_input(turned)) - e0)
        return out

    flat_unet = dataclasses.replace(tiny().model.unet, camera_text_width=0)
    cube, sphere = shifts(PriorModel(dataclasses.replace(tiny().model, unet=flat_unet)))
    assert cube.abs().max() > 1e-4 and torch.allclose(cube, sphere, atol=1e-6)
    torch.manual_seed(0)
    model = PriorModel(tiny().model)
    cube, sphere = shifts(model)
    assert torch.allclose(cube, sphere, atol=1e-6)  # its output layer starts at zero
    cube, sphere = shifts(random_model())
    assert (cube - sphere).abs().max() > 1e-3


def test_experts_route_each_row_to_the_prior_of_its_timestep():
    """Rows with t below the cut get the low prior's noise prediction exactly, the others the high
    one's, each from its own text encoder; priors with other schedules are refused."""
    low, high = random_model(0), random_model(1)
    experts = Experts(low, high, high_from=0.5)
    assert experts.cut == 500
    prompts = ["a red cube", "blue ball, side view", "a red cube", ""]
    z, t = torch.randn(4, 3, 16, 16), torch.tensor([10, 499, 500, 999])
    cam = camera_input(orbit_cameras(4, 16))
    with torch.no_grad():
        got = experts.eps(z, t, experts.encode(prompts), cam)
        want_low = low.eps(z, t, low.encode(prompts), cam)
        want_high = high.eps(z, t, high.encode(prompts), cam)
    assert torch.allclose(got[:2], want_low[:2], atol=1e-5)  # batches of 2 and 4: rounding only
    assert torch.allclose(got[2:], want_high[2:], atol=1e-5)
    assert not torch.allclose(want_low[2:], want_high[2:], atol=1e-3)
    images = sample_prompts(experts, ["a red cube"], seed=0, steps=2, guidance_scale=3.0)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    other = PriorModel(dataclasses.replace(tiny().model, schedule="linear"))
    with pytest.raises(ValueError, match="schedule"):
        Experts(low, other, high_from=0.5)


def test_experts_run_one_prior_when_every_row_falls_to_it(monkeypatch):
    """On the CPU a batch whose timesteps all fall on one side of the cut (an SDS step's two rows)
    runs that expert alone, with the numbers the pair gives."""
    low, high = random_model(0), random_model(1)
    experts = Experts(low, high, high_from=0.5)
    prompts = ["a red cube", ""]
    z, cam = torch.randn(2, 3, 16, 16), camera_input(orbit_cameras(2, 16))
    text = experts.encode(prompts)

    def unused(*args, **kwargs):
        raise AssertionError("the other expert ran")

    for t, used, idle in ((10, low, high), (900, high, low)):
        steps = torch.tensor([t, t])
        with torch.no_grad():
            want = used.eps(z, steps, used.encode(prompts), cam)
            monkeypatch.setattr(idle, "eps", unused)
            got = experts.eps(z, steps, text, cam)
        monkeypatch.undo()
        assert torch.allclose(got, want, atol=1e-6)


def test_forward_shapes_and_eps_from_v():
    model = random_model()
    z, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999])
    text, cam = model.encode(["a red cube", "blue ball, side view", ""]), camera_input(orbit_cameras(3, 16))
    v = model(z, t, text, cam)
    assert v.shape == (3, 3, 16, 16) and torch.isfinite(v).all()
    ab = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(model.eps(z, t, text, cam), ab.sqrt() * v + (1 - ab).sqrt() * z, atol=1e-6)
    # The v target is consistent with eps: eps = alpha v + sigma z_t at z_t = alpha x0 + sigma eps.
    x0, noise = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 3, 16, 16)
    zt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    assert torch.allclose(ab.sqrt() * model.target(x0, noise, t) + (1 - ab).sqrt() * zt, noise, atol=1e-5)


# -------------------------------------------------------------------------------- the file
def test_save_load_roundtrip_in_float16(weights):
    original = random_model()
    loaded = load_prior(weights)
    assert weights.stat().st_size < 2 * sum(p.numel() for p in original.parameters()) + 20_000
    for (name, p), q in zip(original.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p.half().float(), q), name
    assert not any(p.requires_grad for p in loaded.parameters())


def test_checksum_mismatch_is_a_clear_error(weights, tmp_path):
    bad = tmp_path / "prior.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last weight
    bad.write_bytes(bytes(data))
    sha256_sidecar(bad).write_text(sha256_sidecar(weights).read_text())
    with pytest.raises(PriorFileError, match="checksum mismatch") as e:
        load_prior(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(PriorFileError, match="no prior weights file"):
        load_prior(tmp_path / "missing.safetensors")


def test_missing_packaged_weights_is_a_user_error(monkeypatch, tmp_path):
    import dreamfusion.guidance.bundled as bundled

    monkeypatch.setattr(bundled, "PRIOR_PATH", tmp_path / "prior.safetensors")
    cfg = dataclasses.replace(tiny_config_guidance(), model=None)
    with pytest.raises(UserError, match="not installed"):
        load_bundled(cfg, SDSConfig(), torch.device("cpu"))


def test_the_packaged_high_noise_expert_loads_by_name_with_its_checksum(monkeypatch, tmp_path):
    import dreamfusion.guidance.bundled as bundled
    from dreamfusion.weights import HIGH_NOISE_PRIOR_PATH, PRIOR_PATH

    if not (PRIOR_PATH.is_file() and HIGH_NOISE_PRIOR_PATH.is_file()):
        pytest.skip("the packaged priors are not installed")
    guidance = dataclasses.replace(tiny_config_guidance(), high_noise_model="bundled")
    loaded = load_bundled(guidance, SDSConfig(), torch.device("cpu"))
    assert isinstance(loaded.model, Experts) and loaded.model.cut == 600
    low, high = load_prior(PRIOR_PATH), load_prior(HIGH_NOISE_PRIOR_PATH)
    pairs = zip(low.state_dict().values(), high.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)  # two different priors, not one twice
    # Corrupted or missing, it is one line that says what to do.
    damaged = tmp_path / "prior_high_noise.safetensors"
    damaged.write_bytes(HIGH_NOISE_PRIOR_PATH.read_bytes()[:-1] + b"x")
    (tmp_path / "prior_high_noise.safetensors.sha256").write_text(
        HIGH_NOISE_PRIOR_PATH.with_name("prior_high_noise.safetensors.sha256").read_text()
    )
    monkeypatch.setattr(bundled, "HIGH_NOISE_PRIOR_PATH", damaged)
    with pytest.raises(UserError, match="high-noise-model .*checksum mismatch"):
        load_bundled(guidance, SDSConfig(), torch.device("cpu"))
    monkeypatch.setattr(bundled, "HIGH_NOISE_PRIOR_PATH", tmp_path / "gone.safetensors")
    with pytest.raises(UserError, match="high-noise expert's weights are not installed.*reinstall"):
        load_bundled(guidance, SDSConfig(), torch.device("cpu"))


def tiny_config_guidance():
    from dreamfusion.config import BundledGuidanceConfig

    return BundledGuidanceConfig()


def test_packaged_path_requires_its_checksum_file(monkeypatch, weights, tmp_path):
    import shutil

    import dreamfusion.guidance.bundled as bundled

    packaged = tmp_path / "prior.safetensors"
    shutil.copy(weights, packaged)
    monkeypatch.setattr(bundled, "PRIOR_PATH", packaged)
    with pytest.raises(UserError, match="checksum file"):
        load_bundled(tiny_config_guidance(), SDSConfig(), torch.device("cpu"))
    shutil.copy(sha256_sidecar(weights), sha256_sidecar(packaged))
    guidance = load_bundled(tiny_config_guidance(), SDSConfig(), torch.device("cpu"))
    assert guidance.model.image_size == 16


def test_shipped_weights_load_and_sample():
    from dreamfusion.weights import PRIOR_PATH

    if not PRIOR_PATH.is_file():
        pytest.skip(f"no packaged prior weights at {PRIOR_PATH} yet")
    guidance = load_bundled(tiny_config_guidance(), SDSConfig(), torch.device("cpu"))
    images = sample_prompts(guidance.model, ["a red cube, front view"], seed=0, steps=2)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


# ---------------------------------------------------------------------------------- training
def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    from dreamfusion.prior_training.data import world_config
    from dreamfusion.world.dataset import sample_batch

    torch.manual_seed(0)
    model = PriorModel(tiny().model).train()
    images, captions, labels = sample_batch(8, torch.Generator().manual_seed(0), cfg=world_config(16, 1, 24))
    x0 = images * 2 - 1
    tokens = model.tokenizer.encode(captions)
    camera = camera_features(
        labels["elevation"], labels["azimuth"], labels["distance"], labels["focal"], labels["c2w"]
    )
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(1000, (8,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    optimizer = build_optimizer(model, dataclasses.replace(tiny().train.optim, lr=3e-3), fused=False)

    def loss() -> torch.Tensor:
        return diffusion_loss(model, x0, tokens, camera, labels["mode"], t, noise)

    first = float(loss().detach())
    for _ in range(30):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert float(loss().detach()) < 0.7 * first


def test_resume_equals_uninterrupted(tmp_path):
    whole = PriorTrainer(tiny_recipe(6), tmp_path / "whole")
    whole.train()

    first = PriorTrainer(tiny_recipe(6), tmp_path / "split")
    step = first.train_step

    def stop_after_3(stats):  # an interruption (Ctrl-C) after the third step
        step(stats)
        first._stop_requested = first.step == 3

    first.train_step = stop_after_3
    first.train()
    assert first.step == 3
    PriorTrainer(tiny_recipe(6), tmp_path / "split", resume=True).train()

    a = load_checkpoint(list_checkpoints(whole.run.checkpoints)[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert a.step == b.step == 6 and a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    # The shipped file too (its bytes may differ: safetensors writes metadata keys in hash order).
    ema_whole, ema_split = (
        load_prior(whole.run.path / "prior.safetensors"),
        load_prior(tmp_path / "split" / "prior.safetensors"),
    )
    for p, q in zip(ema_whole.state_dict().values(), ema_split.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    steps = [line for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6


# ---------------------------------------------------------------------------------- sampling
def test_ddim_sampler_shape_range_and_determinism(weights):
    model = load_prior(weights)
    assert ddim_timesteps(1000, 4).tolist() == [999, 666, 333, 0]
    images = sample_prompts(model, ["a red cube", "a green torus, bottom view"], seed=3, steps=4)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(
        images, sample_prompts(model, ["a red cube", "a green torus, bottom view"], seed=3, steps=4)
    )
    text, cam = model.encode(["a red cube"]), camera_input(orbit_cameras(1, 16))
    ancestral = ddim_sample(model, text, cam, torch.Generator().manual_seed(0), steps=4, eta=1.0)
    assert torch.isfinite(ancestral).all()
    lit = sample_prompts(
        model, ["a red cube", "a green torus, bottom view"], seed=3, steps=4, mode="lambertian"
    )
    assert not torch.allclose(lit, images)  # the shading mode is an input
    with pytest.raises(ValueError, match="shading mode"):
        sample_prompts(model, ["a red cube"], steps=2, mode="glossy")


def test_prompt_cameras_follow_the_view_suffix():
    gen = torch.Generator().manual_seed(0)
    feats = prompt_cameras(
        ["a red cube, bottom view", "a red cube, overhead view", "a red cube, back view"], gen
    )
    sin_el, cos_az = feats[:, 0], feats[:, 3]
    assert sin_el[0] < math.sin(math.radians(-20)) and sin_el[1] > math.sin(math.radians(60))
    assert cos_az[2] <= math.cos(math.radians(135)) + 1e-6


# ---------------------------------------------------------------------------------- guidance
def test_embed_encodes_prompts_and_the_empty_prompt(weights):
    model = load_prior(weights)
    guidance = BundledGuidance(model, SDSConfig())
    prompts = view_prompts("a red cube")
    emb = guidance.embed(prompts)
    assert emb.text.pooled.shape[0] == len(prompts) + 1 and emb.uncond_row == len(prompts)
    assert torch.equal(emb.text.pooled[-1], model.encode([""]).pooled[0])
    with pytest.raises(ValueError, match="stable-diffusion"):
        guidance.embed(view_prompts("a ceramic mug"))


def test_sds_gradient_is_finite_and_depends_on_the_camera(weights):
    guidance = BundledGuidance(load_prior(weights), SDSConfig(guidance_scale=10.0))
    emb = guidance.embed(view_prompts("a red cube"))

    def grad(distance: float, elevation: float = 15.0) -> torch.Tensor:
        images = torch.full((2, 3, 16, 16), 0.5, requires_grad=True)
        cams = orbit_cameras(2, 16, elevation=elevation, distance=distance)
        out = guidance.sds_loss(
            images, emb, torch.tensor([0, 2]), cams, torch.Generator().manual_seed(0), 0.0
        )
        out.loss.backward()
        assert out.timesteps.shape == (2,) and torch.isfinite(out.grad_norm)
        return images.grad

    near = grad(1.0)
    assert torch.isfinite(near).all() and near.abs().sum() > 0
    assert not torch.allclose(near, grad(1.5))  # same t and noise, another camera distance
    assert not torch.allclose(near, grad(1.0, elevation=-40.0))  # same distance, from below


def test_generate_two_steps_with_bundled_guidance(weights, tmp_path, tiny):
    import dreamfusion
    from dreamfusion.config import BundledGuidanceConfig

    cfg = tiny(steps=2)
    cfg = dataclasses.replace(cfg, guidance=BundledGuidanceConfig(model=str(weights)))
    result = dreamfusion.generate(
        "a red cube", config=cfg, out=tmp_path / "run", progress=False, export_mesh=False, turntable=False
    )
    assert result.steps == 2 and result.checkpoint.is_file()
    with pytest.raises(UserError, match="ceramic"):
        dreamfusion.generate(
            "a ceramic mug",
            config=cfg,
            out=tmp_path / "mug",
            progress=False,
            export_mesh=False,
            turntable=False,
        )
    assert not (tmp_path / "mug").exists()


def test_high_noise_model_makes_the_bundled_guidance_a_pair_of_experts(weights, tmp_path, tiny):
    """--guidance.high-noise-model: the guidance denoises with Experts (cut at high_noise_from of
    the schedule) and a 2-step generate runs; a missing file or a bad cut is one UserError."""
    import dreamfusion

    guidance = dataclasses.replace(tiny_config_guidance(), model=str(weights), high_noise_model=str(weights))
    loaded = load_bundled(guidance, SDSConfig(), torch.device("cpu"))
    assert isinstance(loaded.model, Experts) and loaded.model.cut == 600
    cfg = tiny(steps=2)
    cfg = dataclasses.replace(cfg, guidance=guidance)
    result = dreamfusion.generate(
        "a red cube", config=cfg, out=tmp_path / "run", progress=False, export_mesh=False, turntable=False
    )
    assert result.steps == 2 and result.checkpoint.is_file()
    for bad, match in (
        ({"high_noise_model": str(tmp_path / "none")}, "no such"),
        ({"high_noise_from": 1.5}, "(0, 1)"),
    ):
        with pytest.raises(UserError, match=match):
            load_bundled(dataclasses.replace(guidance, **bad), SDSConfig(), torch.device("cpu"))


def test_cli_train_and_sample(tmp_path):
    from dreamfusion.cli import main

    assert (
        main(
            ["prior", "train", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]
        )
        == 0
    )
    model = tmp_path / "run" / "prior.safetensors"
    assert model.is_file() and sha256_sidecar(model).is_file()
    grid = tmp_path / "grid.png"
    args = ["prior", "sample", "a blue cone, side view", "-n", "3", "--model", str(model), "--steps", "2"]
    assert main([*args, "--out", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (
        2 * 2 * 16,
        2 * 2 * 16,
    )  # 2 columns x 2 rows of 16 px images, 2x upscaled


def test_fit_minutes_sets_the_run_length(tmp_path, monkeypatch):
    import json

    import dreamfusion.prior_training.train as train

    monkeypatch.setattr(train, "FIT_STEPS", (2, 4))
    monkeypatch.setattr(train, "FIT_RESERVE_S", 0.0)
    trainer = PriorTrainer(tiny_recipe(10_000, checkpoint_every=1000), tmp_path / "run")
    trainer.train(fit_minutes=0.03)
    assert 4 < trainer.step == trainer.cfg.steps < 10_000
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["train"]["steps"]
    assert saved == trainer.step


def test_init_starts_from_given_weights_and_resume_keeps_parameter_layout(tmp_path):
    from dreamfusion.cli import main

    first = PriorTrainer(tiny_recipe(2, channels_last=True), tmp_path / "first")
    weights = first.train()
    tuned = PriorTrainer(tiny_recipe(2, init=str(weights)), tmp_path / "tuned")
    start = load_prior(weights).state_dict()
    for name, param in tuned.model.named_parameters():
        assert torch.equal(param.detach(), start[name]), name  # the model and its EMA begin there
        assert torch.equal(tuned.ema[name], start[name]), name
    fresh = PriorTrainer(tiny_recipe(2), tmp_path / "fresh")
    assert any(not torch.equal(p, fresh.ema[n]) for n, p in tuned.ema.items())

    # Weights of a prior without rays start a prior with rays: their input channels are copied,
    # the ray channels start at zero, so it begins as the same function.
    # The camera-text MLP is new too and its output starts at zero.
    flat_unet = dataclasses.replace(tiny().model.unet, ray_channels=0, camera_text_width=0)
    flat = dataclasses.replace(tiny_recipe(1), model=dataclasses.replace(tiny().model, unet=flat_unet))
    flat_weights = PriorTrainer(flat, tmp_path / "flat").train()
    widened = PriorTrainer(tiny_recipe(2, init=str(flat_weights)), tmp_path / "widened")
    start = load_prior(flat_weights)
    conv_in = widened.model.unet.conv_in.weight.detach()
    assert torch.equal(conv_in[:, :3], start.state_dict()["unet.conv_in.weight"]) and not conv_in[:, 3:].any()
    cams = orbit_cameras(2, 16, elevation=20.0, azimuth_start=30.0)
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    with torch.no_grad():
        before = start(z, t, start.encode(["a red cube"] * 2), camera_input(cams))
        after = widened.model(z, t, widened.model.encode(["a red cube"] * 2), camera_input(cams))
    assert torch.allclose(before, after, atol=1e-5)

    # A resumed optimizer's moments take their parameters' strides (channels_last convolutions):
    # CUDA's fused AdamW refuses mixed layouts.
    resumed = PriorTrainer(tiny_recipe(4, channels_last=True), tmp_path / "first", resume=True)
    for param, state in resumed.optimizer.state.items():
        for value in state.values():
            if torch.is_tensor(value) and value.shape == param.shape:
                assert value.stride() == param.stride()
    assert any(p.dim() == 4 and not p.is_contiguous() for p in resumed.optimizer.state)

    out = tmp_path / "bad"
    missing = str(tmp_path / "none")
    assert main(["prior", "train", "--preset", "tiny", "--out", str(out), "--init", missing]) != 0
    assert main(["prior", "train", "--preset", "tiny", "--out", str(out), "--lr", "-1", "--quiet"]) != 0
    backwards = ["--timesteps", "0.8", "0.2", "--quiet"]
    assert main(["prior", "train", "--preset", "tiny", "--out", str(out), *backwards]) != 0
    assert not (out / "checkpoints").exists()


def test_timestep_range_bounds_the_drawn_timesteps(tmp_path):
    """timestep_range (0.9, 1.0) trains on t in [900, 1000) only, or on a share of each batch;
    a backwards range or a share outside [0, 1] is one error."""
    trainer = PriorTrainer(tiny_recipe(3, timestep_range=(0.9, 1.0)), tmp_path / "hi")
    seen = []
    model = trainer.forward

    def record(z, t, *rest):
        seen.append(t.clone())
        return model(z, t, *rest)

    trainer.forward = record
    trainer.train()
    drawn = torch.cat(seen)
    assert len(seen) == 3 and drawn.min() >= 900 and drawn.max() < 1000
    with pytest.raises(UserError, match="timestep_range"):
        PriorTrainer(tiny_recipe(3, timestep_range=(0.8, 0.2)), tmp_path / "bad")
    # A share of 0.5: about half of a large batch in [900, 1000), the rest anywhere.
    half = PriorTrainer(
        tiny_recipe(1, timestep_range=(0.9, 1.0), timestep_range_share=0.5), tmp_path / "half"
    )
    t = half._timesteps(4000)
    assert 0.5 < float((t >= 900).float().mean()) < 0.6 and int(t.min()) < 100
    with pytest.raises(UserError, match="share"):
        PriorTrainer(tiny_recipe(3, timestep_range_share=1.5), tmp_path / "bad")


def test_cli_objects_weights_the_draw_and_rejects_unknown_names(tmp_path, capsys):
    """--objects cube cube sphere: a fresh run records the list, repeats and all, and the world
    draws a name given k times k times as often; an unknown name or --resume gets one line."""
    import json

    from dreamfusion.cli import main
    from dreamfusion.world import SHAPE_NAMES, WorldConfig, sample_batch

    out = tmp_path / "run"
    args = ["prior", "train", "--preset", "tiny", "--steps", "1", "--out", str(out), "--quiet"]
    assert main([*args, "--objects", "cube", "cube", "sphere"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]["train"]["objects"]
    assert saved == ["cube", "cube", "sphere"]

    world = WorldConfig()
    world = dataclasses.replace(world, camera=dataclasses.replace(world.camera, resolution=8), march_steps=8)
    generator = torch.Generator().manual_seed(0)
    _, _, labels = sample_batch(600, generator, objects=["cube"] * 3 + ["sphere"], cfg=world)
    cubes = int((labels["shape"] == SHAPE_NAMES.index("cube")).sum())
    assert 400 < cubes < 500  # 3/4 of 600 = 450; the binomial spread is about 11

    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--objects", "cube", "spaceship"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spaceship" in err[0] and "sphere" in err[0]
    assert not (tmp_path / "bad").exists()
    assert main([*args, "--resume", "--objects", "cube"]) == 2
