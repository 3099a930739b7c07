"""GraphedForward: eager where it must be, replayed CUDA graphs that equal eager on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamfusion.guidance.graphs import GraphedForward


def small_net(device: str) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    return net.to(device).eval().requires_grad_(False)


def counting(net: nn.Module):
    calls = []

    def fn(x, scale):
        calls.append(1)
        return net(x) * scale

    return fn, calls


def test_cpu_calls_the_function_every_time():
    net = small_net("cpu")
    fn, calls = counting(net)
    graphed = GraphedForward(fn)
    x, scale = torch.randn(2, 3, 8, 8), torch.tensor(2.0)
    with torch.no_grad():
        out = graphed(x, scale)
        graphed(x, scale)
    torch.testing.assert_close(out, net(x) * 2)
    assert len(calls) == 2 and graphed.graphs == {}


def cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: CUDA graphs are checked on the GPU machine")


def test_cuda_replay_equals_eager_for_new_values():
    cuda_or_skip()
    net = small_net("cuda")
    fn, calls = counting(net)
    graphed = GraphedForward(fn, warmup=2)
    with torch.no_grad():
        for seed in range(4):
            x = torch.randn(2, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            scale = torch.tensor(float(seed + 1), device="cuda")
            out = graphed(x, scale)
            torch.testing.assert_close(out, net(x) * (seed + 1))
    # Warm-up (2) and capture (1) ran the function; the other three calls were replays.
    assert len(calls) == 3 and len(graphed.graphs) == 1
    # A new shape is a new graph; outputs are fresh tensors, not the graph's static buffer.
    with torch.no_grad():
        a = graphed(torch.ones(1, 3, 8, 8, device="cuda"), torch.tensor(1.0, device="cuda"))
        b = graphed(torch.zeros(1, 3, 8, 8, device="cuda"), torch.tensor(1.0, device="cuda"))
    assert len(graphed.graphs) == 2 and not torch.equal(a, b)


def test_cuda_grad_mode_and_failed_capture_run_eagerly():
    cuda_or_skip()
    net = small_net("cuda")
    x = torch.randn(2, 3, 8, 8, device="cuda")
    graphed = GraphedForward(lambda x: net(x))
    graphed(x)  # grad mode on: eager, nothing captured
    assert graphed.graphs == {}

    def syncs(x):
        return net(x) * x.sum().item()  # a host sync cannot be captured

    fallback = GraphedForward(syncs, warmup=1)
    with torch.no_grad(), pytest.warns(UserWarning, match="CUDA graph capture failed"):
        out = fallback(x)
    torch.testing.assert_close(out, syncs(x))
    assert not fallback.enabled
