"""A run whose SDS gradient stays zero stops with one line; dropped steps and short stalls do not."""

import logging

import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.guidance.base import SDSOutput
from dreamfusion.training.health import Health
from dreamfusion.training.trainer import Trainer
from tests.conftest import tiny_config


class _Zero:
    """A guidance whose SDS gradient is zero for its first `zero_calls` calls (all of them by default),
    then pulls every pixel toward 0.3."""

    def __init__(self, zero_calls: int = 10**9):
        self.zero_calls, self.calls = zero_calls, 0

    def embed(self, prompts):
        return None

    def sds_loss(self, images, embeddings, prompt_index, cameras, generator, progress, shading=None):
        self.calls += 1
        t = torch.zeros(len(images), dtype=torch.long)
        if self.calls <= self.zero_calls:
            return SDSOutput(loss=(images * 0.0).sum(), timesteps=t, grad_norm=torch.zeros(()))
        loss = ((images - 0.3) ** 2).mean()
        return SDSOutput(loss=loss, timesteps=t, grad_norm=loss.detach().sqrt())


def test_a_zero_sds_gradient_warns_once_then_stops_the_run(tmp_path, caplog):
    cfg = tiny_config(steps=40, stall_steps=10, log_every=2, checkpoint_every=100)
    trainer = Trainer("a red sphere", cfg, tmp_path / "run", _Zero())
    with caplog.at_level(logging.WARNING, logger="dreamfusion"):
        with pytest.raises(UserError, match="zero or non-finite for 10 steps in a row") as error:
            trainer.train()
    assert trainer.step == 10  # stopped at the limit, not trained to the end
    assert "--sds.guidance-scale" in str(error.value) and "\n" not in str(error.value)
    assert caplog.text.count("steps in a row; the run stops at 10") == 1


def test_the_stall_is_checked_every_stall_steps_even_between_log_lines(tmp_path):
    cfg = tiny_config(steps=40, stall_steps=5, log_every=1000, checkpoint_every=100)
    trainer = Trainer("a red sphere", cfg, tmp_path / "run", _Zero())
    with pytest.raises(UserError, match="for 5 steps in a row"):
        trainer.train()
    assert trainer.step == 5


def test_a_stall_shorter_than_the_limit_lets_the_run_finish(tmp_path):
    cfg = tiny_config(steps=8, stall_steps=5, log_every=1)
    trainer = Trainer("a red sphere", cfg, tmp_path / "run", _Zero(zero_calls=4))
    trainer.train()
    assert trainer.step == 8 and int(trainer.health.stalled) == 0


def test_stall_steps_zero_never_stops():
    health = Health(torch.device("cpu"), stall_steps=0)
    for _ in range(100):
        health.record(torch.tensor(False), torch.tensor(0.0))
    health.check_stall(100)
    assert int(health.stalled) == 100


def test_a_dropped_step_or_a_non_finite_gradient_counts_as_stalled():
    health = Health(torch.device("cpu"), stall_steps=3)
    health.record(torch.tensor(True), torch.tensor(1.0))  # update dropped
    health.record(torch.tensor(False), torch.tensor(float("nan")))
    health.record(torch.tensor(False), torch.tensor(float("inf")))
    assert int(health.stalled) == 3 and int(health.skipped) == 1
    with pytest.raises(UserError, match="for 3 steps in a row"):
        health.check_stall(3)
    health.record(torch.tensor(False), torch.tensor(0.5))  # a step that learns ends the stall
    assert int(health.stalled) == 0
