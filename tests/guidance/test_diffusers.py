"""Stable Diffusion and DeepFloyd IF guidance on tiny random-weight models: no network, CPU only.

The models are built from configs (tests/diffusers_fixtures.py), saved with save_pretrained, and
loaded through the backends' own from_pretrained path, exactly as a downloaded model would be.
"""

import dataclasses
import math
import sys
import warnings

import pytest
import torch

from dreamfusion.api import GUIDANCE_BACKENDS, generate
from dreamfusion.cli import main as cli_main
from dreamfusion.config import (
    CameraConfig,
    Config,
    DeepFloydIFConfig,
    SDSConfig,
    StableDiffusionConfig,
    guidance_config,
    validate_config,
)
from dreamfusion.errors import UserError
from dreamfusion.guidance import perp_neg, sds
from dreamfusion.guidance.diffusers_common import resolve_dtype
from dreamfusion.guidance.graphs import CompiledOrEager, compile_by_default
from dreamfusion.guidance.unet_sds import annealed_t_range, guided_sds
from dreamfusion.prior.schedule import to_epsilon
from dreamfusion.scene.cameras import sample_cameras
from dreamfusion.scene.prompts import VIEWS, view_index, view_prompts
from tests.conftest import tiny_config

BACKENDS = ["stable-diffusion", "deepfloyd-if"]
SIZE = 16  # native image size of both tiny models


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch, tmp_path):
    """Never reach the Hub; keep the default embedding cache inside the test's folder; one thread
    (tiny tensors gain nothing from threads, and on a shared machine threads only contend)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "default-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    from tests.guidance.diffusers_fixtures import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def if_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    from tests.guidance.diffusers_fixtures import build_tiny_deepfloyd_if

    return build_tiny_deepfloyd_if(tmp_path_factory.mktemp("tiny-if"))


@pytest.fixture
def folders(sd_folder, if_folder):
    return {"stable-diffusion": sd_folder, "deepfloyd-if": if_folder}


def _config(name, model, tmp_path, **guidance):
    cfg = Config()
    return dataclasses.replace(
        cfg,
        guidance=guidance_config(name, model=str(model), cache_dir=str(tmp_path / "cache"), **guidance),
        sds=SDSConfig(guidance_scale=7.5),
    )


def _build(cfg):
    return GUIDANCE_BACKENDS[cfg.guidance.name](cfg, torch.device("cpu"))


def _sds_by_hand(guidance, latents, embeddings, prompt_index, cameras):
    """The SDS of latents through guidance's own model and settings, with the tests' draw (seed 2)."""
    generator = torch.Generator().manual_seed(2)
    return guided_sds(
        guidance.model,
        latents,
        embeddings,
        prompt_index,
        cameras,
        generator,
        0.0,
        guidance.cfg,
        guidance.sds_cfg,
    )


def _cameras(azimuth, elevation):
    cams = sample_cameras(len(azimuth), CameraConfig(resolution=SIZE), torch.Generator().manual_seed(0))
    return dataclasses.replace(
        cams,
        azimuth=torch.tensor(azimuth, dtype=torch.float32),
        elevation=torch.tensor(elevation, dtype=torch.float32),
    )


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", BACKENDS)
def test_missing_diffusers_names_the_extra_in_one_line(monkeypatch, tmp_path, name):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(UserError) as e:
        _build(_config(name, "any/model", tmp_path))
    message = str(e.value)
    assert 'pip install "dreamfusion[diffusers]"' in message and "diffusers" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", BACKENDS)
def test_unreachable_hub_id_offline_is_one_line_with_the_way_out(tmp_path, name):
    pytest.importorskip("diffusers")
    with pytest.raises(UserError) as e:
        _build(_config(name, "dreamfusion-tests/no-such-model", tmp_path))
    message = str(e.value)
    assert "'dreamfusion-tests/no-such-model'" in message
    assert "not a local folder" in message and "HF_HUB_OFFLINE=1" in message
    assert (
        "hf download dreamfusion-tests/no-such-model --local-dir" in message and "--guidance.model" in message
    )
    assert "\n" not in message


def test_unreachable_hub_id_through_the_cli_prints_one_line_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("diffusers")
    out = tmp_path / "run"
    code = cli_main(
        [
            "generate",
            "a mug",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(out),
            "--guidance",
            "stable-diffusion",
            "--guidance.model",
            "dreamfusion-tests/no-such-model",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot load guidance model")
    assert not out.exists()


def test_folders_that_are_not_the_right_diffusers_model(tmp_path, folders):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a diffusers model folder .no model_index.json"):
        _build(_config("stable-diffusion", empty, tmp_path))
    with pytest.raises(UserError, match="IFPipeline model, not one the stable-diffusion guidance uses"):
        _build(_config("stable-diffusion", folders["deepfloyd-if"], tmp_path))
    with pytest.raises(
        UserError, match="StableDiffusionPipeline model, not one the deepfloyd-if guidance uses"
    ):
        _build(_config("deepfloyd-if", folders["stable-diffusion"], tmp_path))
    with pytest.raises(UserError, match="neither a folder nor a hub id"):
        _build(_config("deepfloyd-if", tmp_path / "no" / "such" / "folder", tmp_path))


def test_a_folder_with_a_broken_part_names_the_part(tmp_path, sd_folder):
    import shutil

    broken = tmp_path / "broken-sd"
    shutil.copytree(sd_folder, broken)
    (broken / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match=r"cannot load the unet of guidance model '.*broken-sd'"):
        _build(_config("stable-diffusion", broken, tmp_path))
    shutil.rmtree(broken / "vae")
    with pytest.raises(UserError, match="has no vae/ folder"):
        _build(_config("stable-diffusion", broken, tmp_path))


def test_fp16_weight_files_are_found_and_used_in_any_dtype(tmp_path, sd_folder):
    import shutil

    from diffusers import UNet2DConditionModel

    from dreamfusion.guidance.diffusers_common import locate_model, weight_variants
    from dreamfusion.guidance.stable_diffusion import KIND

    both = tmp_path / "both"
    shutil.copytree(sd_folder, both)
    UNet2DConditionModel.from_pretrained(both, subfolder="unet").half().save_pretrained(
        both / "unet", variant="fp16"
    )
    source = locate_model(str(both), None, KIND)
    assert weight_variants(source, "unet", "auto", torch.float16) == ["fp16", None]
    assert weight_variants(source, "unet", "auto", torch.float32) == [None, "fp16"]
    assert weight_variants(source, "vae", "auto", torch.float16) == [None]
    assert weight_variants(source, "unet", None, torch.float16) == [None]

    (both / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # an fp16-only download
    assert weight_variants(source, "unet", "auto", torch.float32) == ["fp16"]
    guidance = _build(_config("stable-diffusion", both, tmp_path))
    assert guidance.model.dtype == torch.float32  # fp16 files, upcast on the CPU


# ----------------------------------------------------------------------------- the SDS gradient
def test_sds_gradient_reaches_the_render_through_the_vae_encoder(tmp_path, sd_folder):
    guidance = _build(_config("stable-diffusion", sd_folder, tmp_path))
    embeddings = guidance.embed(view_prompts("a red car"))
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    cameras = _cameras([10.0, 170.0], [20.0, 30.0])
    prompt_index = view_index(cameras.elevation, cameras.azimuth)

    latents = guidance.encode_images(images)  # 12 px renders upsampled to the native 16
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    out = guidance.sds_loss(images, embeddings, prompt_index, cameras, torch.Generator().manual_seed(2), 0.0)
    out.loss.backward()
    assert out.timesteps.shape == (2,) and torch.isfinite(out.loss) and torch.isfinite(out.grad_norm)
    assert images.grad.shape == images.shape and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0

    # Chain rule: the render's gradient is the encoder's vector-Jacobian product of the latent's.
    detached = latents.detach().requires_grad_(True)
    again = _sds_by_hand(guidance, detached, embeddings, prompt_index, cameras)
    again.loss.backward()
    (expected,) = torch.autograd.grad(guidance.encode_images(images), images, grad_outputs=detached.grad)
    torch.testing.assert_close(images.grad, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(again.timesteps, out.timesteps)


@pytest.mark.parametrize("formulation", ["uncond", "cond"])
def test_cfg_matches_a_manual_computation_with_the_unet(tmp_path, if_folder, formulation):
    cfg = _config("deepfloyd-if", if_folder, tmp_path)
    cfg = dataclasses.replace(cfg, sds=SDSConfig(guidance_scale=7.5, cfg_formulation=formulation))
    guidance = _build(cfg)
    embeddings = guidance.embed(view_prompts("a blue chair"))
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), requires_grad=True)
    cameras = _cameras([0.0, 100.0], [10.0, 80.0])
    prompt_index = view_index(cameras.elevation, cameras.azimuth)  # front, overhead
    out = guidance.sds_loss(images, embeddings, prompt_index, cameras, torch.Generator().manual_seed(4), 0.0)
    out.loss.backward()

    # By hand: same draws (t, then eps), each branch through the U-Net on its own, eps channels only.
    gen = torch.Generator().manual_seed(4)
    alphas = guidance.model.alphas_cumprod
    t = sds.sample_timesteps(2, alphas.shape[0], cfg.sds.t_range, gen, "cpu")
    x = images.detach() * 2 - 1
    eps = torch.randn(x.shape, generator=gen)
    a = alphas[t].view(2, 1, 1, 1)
    z = a.sqrt() * x + (1 - a).sqrt() * eps
    unet = guidance.model.unet
    with torch.no_grad():
        eps_u = unet(z, t, encoder_hidden_states=embeddings.uncond.expand(2, -1, -1)).sample[:, :3]
        eps_c = unet(z, t, encoder_hidden_states=embeddings.cond[prompt_index]).sample[:, :3]
    base = eps_u if formulation == "uncond" else eps_c
    eps_hat = base + 7.5 * (eps_c - eps_u)
    grad_x = (1 - a) * (eps_hat - eps)  # w(t) = sigma_t^2
    torch.testing.assert_close(out.timesteps, t)
    torch.testing.assert_close(images.grad, 2 * grad_x / 2, rtol=1e-4, atol=1e-5)  # d x / d image = 2, / B


def test_perp_neg_matches_a_manual_computation_at_the_front(tmp_path, if_folder):
    guidance = _build(_config("deepfloyd-if", if_folder, tmp_path, perp_neg=True))
    embeddings = guidance.embed(view_prompts("a blue chair"))
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8), requires_grad=True)
    cameras = _cameras([0.0], [10.0])  # exactly the front: positive = front prompt
    out = guidance.sds_loss(
        images, embeddings, torch.tensor([0]), cameras, torch.Generator().manual_seed(9), 0.0
    )
    out.loss.backward()

    gen = torch.Generator().manual_seed(9)
    alphas = guidance.model.alphas_cumprod
    t = sds.sample_timesteps(1, alphas.shape[0], guidance.sds_cfg.t_range, gen, "cpu")
    x = images.detach() * 2 - 1
    eps = torch.randn(x.shape, generator=gen)
    a = alphas[t].view(1, 1, 1, 1)
    z = a.sqrt() * x + (1 - a).sqrt() * eps
    rows = {v: [i for i, p in enumerate(embeddings.prompts) if p.endswith(f", {v} view")][0] for v in VIEWS}
    with torch.no_grad():

        def unet(emb):
            return guidance.model.unet(z, t, encoder_hidden_states=emb).sample[:, :3]

        e_u = unet(embeddings.uncond)
        e_front = unet(embeddings.cond[rows["front"]][None]) - e_u
        e_side = unet(embeddings.cond[rows["side"]][None]) - e_u
    side_part = e_side - (e_side * e_front).sum() / (e_front * e_front).sum() * e_front
    w_front, w_side = 4 * math.exp(-0.5) - 2.426, 4 - 2.426  # front: r = 1 for front, 0 for side
    # The front negative is parallel to the positive: its perpendicular part is zero whatever its weight.
    eps_hat = e_u + 7.5 * (e_front - w_side * side_part) + 0 * w_front
    grad_x = (1 - a) * (eps_hat - eps)
    torch.testing.assert_close(images.grad, 2 * grad_x, rtol=1e-4, atol=1e-5)


def test_unets_use_pytorch_scaled_dot_product_attention(tmp_path, folders):
    for name, folder in folders.items():
        unet = _build(_config(name, folder, tmp_path)).model.unet
        names = {type(p).__name__ for p in unet.attn_processors.values()}
        assert names and all(n.endswith("2_0") for n in names), names  # AttnProcessor2_0 and the like


def test_perp_neg_with_zero_negative_weights_is_plain_cfg(tmp_path, sd_folder):
    zero = (0.0, 0.0, 0.0)
    plain = _build(_config("stable-diffusion", sd_folder, tmp_path))
    pn = _build(
        _config(
            "stable-diffusion",
            sd_folder,
            tmp_path,
            perp_neg=True,
            perp_neg_front_side=zero,
            perp_neg_side_front=zero,
            perp_neg_side_back=zero,
            perp_neg_front_back=zero,
        )
    )
    embeddings = plain.embed(view_prompts("a red car"))
    cameras = _cameras([0.0, 180.0, 30.0], [10.0, 10.0, 85.0])  # exactly front, exactly back, overhead
    prompt_index = view_index(cameras.elevation, cameras.azimuth)
    assert [VIEWS[i] for i in prompt_index] == ["front", "back", "overhead"]
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    grads = []
    for guidance in (plain, pn):
        x = images.clone().requires_grad_(True)
        guidance.sds_loss(
            x, embeddings, prompt_index, cameras, torch.Generator().manual_seed(6), 0.0
        ).loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_perp_neg_formula_by_hand():
    e_u = torch.zeros(1, 1, 1, 2)
    e_pos = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    e_neg = torch.tensor([1.0, 1.0]).view(1, 1, 1, 1, 2)  # K = 1; perpendicular part to e_pos is (0, 1)
    out = perp_neg.perp_neg_conditional(e_u, e_pos, e_neg, torch.tensor([[2.0]]))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, -2.0]))
    # guided with the one CFG formula: eps_u + s (e_pos - w perp)
    torch.testing.assert_close(sds.guided_eps(e_u, out, 3.0, "uncond").flatten(), torch.tensor([3.0, -6.0]))


def test_perp_neg_plan_at_the_cardinal_views():
    cfg = DeepFloydIFConfig()
    params = (
        cfg.perp_neg_front_side,
        cfg.perp_neg_side_front,
        cfg.perp_neg_side_back,
        cfg.perp_neg_front_back,
    )
    plan = perp_neg.perp_neg_plan(
        torch.tensor([0.0, 45.0, -90.0, 180.0, 30.0]),
        torch.tensor([False, False, False, False, True]),
        *params,
    )
    F_, S, B, OV, U = perp_neg.FRONT, perp_neg.SIDE, perp_neg.BACK, perp_neg.OVERHEAD, perp_neg.UNCOND
    expected_positive = torch.zeros(5, 4)
    expected_positive[0, F_] = 1.0
    expected_positive[1, F_] = expected_positive[1, S] = 0.5
    expected_positive[2, S] = 1.0
    expected_positive[3, B] = 1.0
    expected_positive[4, OV] = 1.0
    torch.testing.assert_close(plan.positive, expected_positive)
    assert plan.negatives.tolist() == [[F_, S], [F_, S], [S, F_], [S, F_], [U, U]]
    e = math.exp
    expected_weights = [
        [4 * e(-0.5) - 2.426, 4 - 2.426],  # front: the front prompt is not pushed away from, the side is
        [4 * e(-0.25) - 2.426, 4 * e(-0.25) - 2.426],
        [e(-0.5) - 0.606, e(-0.5) + 0.967],  # side (from the back half's formulas, r = 1)
        [1 - 0.606, 1 + 0.967],  # back
        [0.0, 0.0],
    ]
    torch.testing.assert_close(plan.weights, torch.tensor(expected_weights), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ embeddings cache
def test_embedding_cache_hit_skips_the_text_encoder(tmp_path, sd_folder, if_folder):
    first = _build(_config("stable-diffusion", sd_folder, tmp_path))
    calls = []
    load = first.load_text_encoder

    def counting_loader():
        encode = load()
        return lambda texts: calls.append(list(texts)) or encode(texts)

    first.load_text_encoder = counting_loader
    prompts = view_prompts("a ceramic mug")
    a = first.embed(prompts)
    assert calls == [[*prompts, ""]]  # four views and the empty negative prompt, in one batch
    assert len(list((tmp_path / "cache" / "embeddings").rglob("*.safetensors"))) == 5

    second = _build(_config("stable-diffusion", sd_folder, tmp_path))

    def no_text_encoder():
        raise AssertionError("the text encoder was loaded although every prompt is cached")

    second.load_text_encoder = no_text_encoder
    b = second.embed(prompts)
    torch.testing.assert_close(b.cond, a.cond, rtol=0, atol=0)
    torch.testing.assert_close(b.uncond, a.uncond, rtol=0, atol=0)

    first.embed(view_prompts("a ceramic mug")[:2] + ["a teapot, front view"])  # one new text only
    assert calls[-1] == ["a teapot, front view"]
    other = _build(_config("deepfloyd-if", if_folder, tmp_path))  # another model never shares entries
    other.load_text_encoder = no_text_encoder
    with pytest.raises(AssertionError, match="text encoder was loaded"):
        other.embed(prompts)


# --------------------------------------------------------------------------- timesteps, dtypes
def test_annealed_t_range_by_hand():
    base = SDSConfig(t_range=(0.02, 0.98), t_anneal_end=0.5)
    assert annealed_t_range(base, 0.7) == (0.02, 0.98)
    lin = dataclasses.replace(base, t_anneal="linear")
    assert annealed_t_range(lin, 0.0) == pytest.approx((0.02, 0.98))
    assert annealed_t_range(lin, 0.5) == pytest.approx((0.02, 0.74))
    assert annealed_t_range(lin, 1.0) == pytest.approx((0.02, 0.5))
    assert annealed_t_range(dataclasses.replace(base, t_anneal="sqrt"), 0.25) == pytest.approx((0.02, 0.74))
    step = dataclasses.replace(base, t_anneal="step", t_anneal_start=0.5)
    assert annealed_t_range(step, 0.49) == pytest.approx((0.02, 0.98))
    assert annealed_t_range(step, 0.5) == pytest.approx((0.02, 0.5))
    delayed = dataclasses.replace(lin, t_anneal_start=0.5)
    assert annealed_t_range(delayed, 0.75) == pytest.approx((0.02, 0.74))


def test_annealing_reaches_the_backend(tmp_path, if_folder):
    cfg = _config("deepfloyd-if", if_folder, tmp_path)
    cfg = dataclasses.replace(cfg, sds=SDSConfig(t_anneal="linear", t_anneal_end=0.1))
    guidance = _build(cfg)
    embeddings = guidance.embed(view_prompts("a red car"))
    cameras = _cameras([0.0] * 8, [0.0] * 8)
    images = torch.rand(8, 3, SIZE, SIZE)
    late = guidance.sds_loss(
        images, embeddings, torch.zeros(8, dtype=torch.long), cameras, torch.Generator(), 1.0
    )
    assert late.timesteps.max() < 100 and late.timesteps.min() >= 20


def test_v_prediction_and_sample_outputs_become_epsilon():
    gen = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    alphabar = torch.tensor([0.9, 0.2])
    a, s = alphabar.sqrt().view(2, 1, 1, 1), (1 - alphabar).sqrt().view(2, 1, 1, 1)
    z = a * x0 + s * eps
    torch.testing.assert_close(to_epsilon(a * eps - s * x0, z, alphabar, "v_prediction"), eps)
    torch.testing.assert_close(to_epsilon(x0, z, alphabar, "sample"), eps, rtol=1e-4, atol=1e-5)
    assert to_epsilon(eps, z, alphabar, "epsilon") is eps


def test_auto_dtype_is_half_on_cuda_only():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_compiling_is_on_by_default_on_cuda_only(tmp_path, sd_folder):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_by_default(None, cuda) and not compile_by_default(None, cpu)
    assert compile_by_default(True, cpu) and not compile_by_default(False, cuda)
    guidance = _build(_config("stable-diffusion", sd_folder, tmp_path))  # on the CPU, the default
    assert not isinstance(guidance.vae.encoder, CompiledOrEager)
    assert not isinstance(guidance.model.unet, CompiledOrEager)


def test_a_failed_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(module):
        def call(*args, **kwargs):
            raise RuntimeError("no C compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    module = torch.nn.Linear(3, 2)
    wrapped = CompiledOrEager(module)
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="compile failed .*no C compiler found.*running Linear eagerly"):
        out = wrapped(x)
    torch.testing.assert_close(out, module(x))
    assert wrapped.state == "eager"
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        torch.testing.assert_close(wrapped(x), module(x))
    assert not later  # one warning, not one per call


def test_errors_after_a_successful_compiled_call_propagate(monkeypatch):
    calls = []

    def flaky_compile(module):
        def call(x):
            calls.append(x)
            if len(calls) > 1:
                raise ValueError("bad input")
            return module(x)

        return call

    monkeypatch.setattr(torch, "compile", flaky_compile)
    wrapped = CompiledOrEager(torch.nn.Linear(3, 2))
    wrapped(torch.randn(1, 3))
    assert wrapped.state == "compiled"
    with pytest.raises(ValueError, match="bad input"):
        wrapped(torch.randn(1, 3))


def test_latent_sds_scores_the_render_as_the_latent_without_the_vae(tmp_path, sd_folder, monkeypatch):
    """guidance.latent_warmup's path: a 4-channel render in [0, 1] is resized to the latent size and
    scaled to [-1, 1], then SDS as on an encoded latent; the VAE is never called."""
    guidance = _build(_config("stable-diffusion", sd_folder, tmp_path))
    monkeypatch.setattr(guidance.vae, "encode", lambda *a, **k: pytest.fail("the VAE was called"))
    embeddings = guidance.embed(view_prompts("a red car"))
    cameras = _cameras([10.0, 170.0], [20.0, 30.0])
    prompt_index = view_index(cameras.elevation, cameras.azimuth)
    render = torch.rand(2, 4, 12, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = guidance.sds_loss_latent(
        render, embeddings, prompt_index, cameras, torch.Generator().manual_seed(2), 0.0
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and render.grad.shape == render.shape and render.grad.abs().sum() > 0
    z = torch.nn.functional.interpolate(render.detach(), size=(8, 8), mode="bilinear", align_corners=False)
    by_hand = _sds_by_hand(guidance, z * 2.0 - 1.0, embeddings, prompt_index, cameras)
    torch.testing.assert_close(out.loss, by_hand.loss)
    with pytest.raises(ValueError, match=r"latents must be \(B, 4, H, W\)"):
        guidance.sds_loss_latent(render[:, :3], embeddings, prompt_index, cameras, torch.Generator(), 0.0)


def test_latent_warmup_steps_skip_the_vae_then_training_goes_on_through_it(tmp_path, sd_folder):
    from dreamfusion.training.trainer import Trainer

    cfg = tiny_config(steps=4)
    cfg = dataclasses.replace(
        cfg,
        camera=dataclasses.replace(cfg.camera, resolution=SIZE),
        guidance=StableDiffusionConfig(
            model=str(sd_folder),
            cache_dir=str(tmp_path / "cache"),
            latent_warmup=0.5,
        ),
    )
    guidance = _build(cfg)
    encode, calls = guidance.vae.encode, []
    guidance.vae.encode = lambda x: calls.append(x.shape) or encode(x)
    trainer = Trainer("a red car", cfg, tmp_path / "run", guidance)
    shadings = []
    for _ in range(4):
        before = [p.detach().clone() for p in trainer.field.parameters()]
        shadings.append(trainer.train_step()["shading"])
        assert any(not torch.equal(a, p) for a, p in zip(before, trainer.field.parameters(), strict=True))
    assert shadings[:2] == ["latent", "latent"] and "latent" not in shadings[2:]
    assert len(calls) == 2  # the VAE only after the warm-up


def test_latent_warmup_with_a_pixel_model_is_one_clear_error(tmp_path):
    from dreamfusion.training.trainer import Trainer

    cfg = tiny_config(steps=4)
    with pytest.raises(UserError, match="guidance closed-form has no setting latent_warmup"):
        guidance_config("closed-form", latent_warmup=0.5)
    pixels = GUIDANCE_BACKENDS[cfg.guidance.name](cfg, torch.device("cpu"))
    cfg = dataclasses.replace(cfg, guidance=StableDiffusionConfig(latent_warmup=0.5))
    with pytest.raises(UserError, match="latent_warmup needs a latent model"):
        Trainer("a red car", cfg, tmp_path / "run", pixels)
    assert not (tmp_path / "run").exists()  # nothing written
    bad = dataclasses.replace(cfg, guidance=StableDiffusionConfig(latent_warmup=1.5))
    with pytest.raises(UserError, match=r"latent_warmup must lie in \[0, 1\] \(got 1.5\)"):
        validate_config(bad)


def test_normal_latent_is_the_normal_map_over_black_then_the_opacity():
    from dreamfusion.render.volume import normal_latent

    normal = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view(2, 3, 1, 1).transpose(0, 1).reshape(1, 3, 1, 2)
    alpha = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)  # an opaque pixel facing +x, an empty one
    latent = normal_latent(normal, alpha)
    assert latent.shape == (1, 4, 1, 2)
    torch.testing.assert_close(latent[0, :, 0, 0], torch.tensor([1.0, 0.5, 0.5, 1.0]))
    torch.testing.assert_close(latent[0, :, 0, 1], torch.zeros(4))


# ------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", BACKENDS)
def test_two_step_generate_with_each_backend(tmp_path, folders, name):
    cfg = tiny_config(steps=2)
    cfg = dataclasses.replace(
        cfg,
        camera=dataclasses.replace(cfg.camera, resolution=SIZE),
        guidance=guidance_config(name, model=str(folders[name]), cache_dir=str(tmp_path / "cache")),
    )
    result = generate("a red car", out=tmp_path / "run", guidance=name, config=cfg)
    assert result.steps == 2 and result.skipped_steps == 0 and result.checkpoint.is_file()
    assert result.config.guidance.name == name
    assert len(list((tmp_path / "cache" / "embeddings").rglob("*.safetensors"))) == 5
    params = [p for p in result.field.parameters()]
    assert all(torch.isfinite(p).all() for p in params)


def test_compiled_unet_and_vae_encoder_give_the_eager_sds_gradient(tmp_path, sd_folder):
    """`guidance.compile` compiles the U-Net and the VAE encoder (forward and backward): same loss
    and same gradient on the render as eager, to float32 rounding."""
    pytest.importorskip("torch._inductor")
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    cameras = _cameras([10.0, 170.0], [20.0, 30.0])
    prompt_index = view_index(cameras.elevation, cameras.azimuth)
    results = {}
    for compiled in (False, True):
        guidance = _build(_config("stable-diffusion", sd_folder, tmp_path, compile=compiled))
        embeddings = guidance.embed(view_prompts("a red car"))
        render = images.clone().requires_grad_(True)
        out = guidance.sds_loss(
            render, embeddings, prompt_index, cameras, torch.Generator().manual_seed(2), 0.0
        )
        out.loss.backward()
        results[compiled] = (out.loss.detach(), render.grad)
    assert isinstance(guidance.vae.encoder, CompiledOrEager) and guidance.vae.encoder.state == "compiled"
    assert isinstance(guidance.model.unet, CompiledOrEager) and guidance.model.unet.state == "compiled"
    torch._dynamo.reset()
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-3, atol=1e-6)
    assert results[True][1].abs().sum() > 0
