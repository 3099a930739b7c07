"""The SDS gradient, CFG and weighting, checked against hand formulas."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfusion.config import SDSConfig
from dreamfusion.guidance.sds import (
    guided_eps,
    sample_timesteps,
    score_distillation,
    sds_loss,
    sds_weight,
    timestep_bounds,
)
from dreamfusion.prior.schedule import NoiseSchedule


def fake_denoise(z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, non-trivial function of (z_t, t) standing in for a frozen U-Net."""
    tt = t.to(z_t.dtype).view(-1, 1, 1, 1) / 1000.0
    return 0.5 * z_t + tt, torch.tanh(z_t) - tt * z_t


def test_schedule_linear_values():
    schedule = NoiseSchedule()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert schedule.alphas_cumprod.shape == (1000,)
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-6)
    assert schedule.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - betas[1].item()), rel=1e-6)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(torch.prod(1 - betas).item(), rel=1e-4)
    t = torch.tensor([0, 10, 500, 999])
    a, s = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(4))  # variance preserving
    assert (schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1]).all()


def test_schedule_cosine_and_errors():
    schedule = NoiseSchedule(kind="cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert schedule.alphas_cumprod[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-5)
    assert (schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1]).all()
    assert schedule.alphas_cumprod[-1].item() > 0.0  # beta capped at 0.999
    assert schedule.to("cpu") is schedule
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule(kind="quadratic")  # type: ignore[arg-type]


def test_guided_eps_formulations():
    g = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    s = 7.5
    uncond = guided_eps(eps_u, eps_c, s, "uncond")
    cond = guided_eps(eps_u, eps_c, s, "cond")
    torch.testing.assert_close(uncond, eps_u + 7.5 * (eps_c - eps_u))
    torch.testing.assert_close(cond, eps_c + 7.5 * (eps_c - eps_u))
    torch.testing.assert_close(cond - uncond, eps_c - eps_u)
    torch.testing.assert_close(guided_eps(eps_u, eps_c, 1.0, "uncond"), eps_c)
    with pytest.raises(ValueError, match="CFG formulation"):
        guided_eps(eps_u, eps_c, s, "plain")  # type: ignore[arg-type]


def test_sds_weights():
    ac = torch.tensor([0.99, 0.5, 0.36, 0.01])
    t = torch.tensor([0, 2, 3])
    torch.testing.assert_close(sds_weight(ac, t, "sigma2"), torch.tensor([0.01, 0.64, 0.99]))
    torch.testing.assert_close(sds_weight(ac, t, "uniform"), torch.ones(3))
    torch.testing.assert_close(
        sds_weight(ac, t, "snr_sqrt"), torch.tensor([0.99**0.5 * 0.1, 0.6 * 0.8, 0.1 * 0.99**0.5])
    )
    with pytest.raises(ValueError, match="weighting"):
        sds_weight(ac, t, "snr")  # type: ignore[arg-type]


def test_timesteps_in_range():
    assert timestep_bounds(1000, (0.02, 0.98)) == (20, 980)
    g = torch.Generator().manual_seed(1)
    t = sample_timesteps(4000, 1000, (0.02, 0.98), g, "cpu")
    assert t.dtype == torch.long and t.shape == (4000,)
    assert t.min().item() >= 20 and t.max().item() < 980
    assert t.min().item() < 30 and t.max().item() > 970  # covers the range, not a constant
    narrow = sample_timesteps(50, 1000, (0.5, 0.5), g, "cpu")
    assert (narrow == 500).all()
    with pytest.raises(ValueError, match="t_range"):
        sample_timesteps(1, 1000, (0.9, 0.1), g, "cpu")


def test_sds_loss_gradient_is_weighted_residual():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 4, 4, generator=g, requires_grad=True)
    eps_hat, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    w = torch.tensor([0.1, 0.5, 2.0])
    sds_loss(x, eps_hat, eps, w).backward()
    torch.testing.assert_close(x.grad, w.view(3, 1, 1, 1) * (eps_hat - eps) / 3)

    x.grad = None
    sds_loss(x, eps_hat, eps, w, grad_clip=0.3).backward()
    torch.testing.assert_close(x.grad, (w.view(3, 1, 1, 1) * (eps_hat - eps)).clamp(-0.3, 0.3) / 3)

    x.grad = None
    bad = eps_hat.clone()
    bad[0, 0, 0, 0] = float("nan")
    bad[1, 0, 0, 0] = float("inf")
    loss = sds_loss(x, bad, eps, w)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[0, 0, 0, 0] == 0.0 and x.grad[1, 0, 0, 0] == 0.0


@pytest.mark.parametrize("formulation", ["uncond", "cond"])
@pytest.mark.parametrize("weighting", ["sigma2", "uniform", "snr_sqrt"])
def test_score_distillation_gradient_matches_manual(formulation, weighting):
    cfg = SDSConfig(guidance_scale=3.0, cfg_formulation=formulation, weighting=weighting)
    ac = NoiseSchedule().alphas_cumprod
    B = 2
    x = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = score_distillation(x, fake_denoise, ac, cfg, torch.Generator().manual_seed(10))
    out.loss.backward()

    # Replay the same draws by hand: t first, then eps.
    g = torch.Generator().manual_seed(10)
    t = torch.randint(20, 980, (B,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    ab = ac[t].view(B, 1, 1, 1)
    z_t = ab.sqrt() * x.detach() + (1 - ab).sqrt() * eps
    eps_u, eps_c = fake_denoise(z_t, t)
    s = 3.0
    eps_hat = eps_u + s * (eps_c - eps_u) if formulation == "uncond" else eps_c + s * (eps_c - eps_u)
    w = {"sigma2": 1 - ab, "uniform": torch.ones_like(ab), "snr_sqrt": (ab * (1 - ab)).sqrt()}[weighting]
    expected = w * (eps_hat - eps)

    assert torch.equal(out.timesteps, t)
    torch.testing.assert_close(x.grad, expected / B)
    torch.testing.assert_close(out.grad_norm, expected.flatten(1).norm(dim=1).mean())
    torch.testing.assert_close(out.loss, 0.5 * (expected**2).sum() / B)


def test_denoiser_gets_no_grad_and_loss_is_deterministic():
    seen = []

    def spy(z_t, t):
        seen.append((z_t.requires_grad, torch.is_grad_enabled()))
        return fake_denoise(z_t, t)

    cfg = SDSConfig(guidance_scale=100.0)
    ac = NoiseSchedule().alphas_cumprod
    theta = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    x = 2.0 * theta - 1.0  # a differentiable parameterization in front of SDS
    a = score_distillation(x, spy, ac, cfg, torch.Generator().manual_seed(5))
    b = score_distillation(x, spy, ac, cfg, torch.Generator().manual_seed(5))
    c = score_distillation(x, spy, ac, cfg, torch.Generator().manual_seed(6))
    assert seen == [(False, False)] * 3
    assert torch.equal(a.loss, b.loss) and torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.loss, c.loss)
    a.loss.backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    with pytest.raises(ValueError, match="B, C, H, W"):
        score_distillation(x[0], spy, ac, cfg, torch.Generator())
