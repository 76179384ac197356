"""group_advantages equals TRL's GRPO advantage computation (trl pinned in the train extra)."""

import inspect

import numpy as np
import pytest

from minivz.kernels import group_advantages

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl", reason="pip install -e '.[train]'")


def trl_advantages(rewards: np.ndarray, num_generations: int, scale: bool) -> np.ndarray:
    """TRL GRPOTrainer's formula, built from TRL's own nanstd (sum_then_normalize path)."""
    from trl.trainer.utils import nanstd

    r = torch.tensor(rewards, dtype=torch.float64)
    mean = torch.nanmean(r.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    std = nanstd(r.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    adv = r - mean
    if scale:
        adv = adv / (std + 1e-4)
    return adv.numpy()


def test_trl_still_uses_this_formula():
    """If TRL changes how it normalizes, this fails loudly instead of drifting silently."""
    from trl import GRPOTrainer

    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "nanstd(rewards.view(-1, num_generations), dim=1)" in src
    assert "advantages / (std_rewards + 1e-4)" in src


@pytest.mark.parametrize("g", [2, 4, 8])
@pytest.mark.parametrize("scale", [True, False])
def test_equal_to_trl(g, scale):
    rng = np.random.default_rng(g)
    for rewards in (rng.random(g * 5), rng.integers(0, 2, g * 5).astype(float), np.ones(g * 3)):
        ours = group_advantages(rewards, g, eps=1e-4, scale=scale)
        # rtol 1e-6: TRL's nanstd computes Bessel's factor count/(count-1) as a float32
        # tensor (integer division in torch's default dtype), so TRL itself is exact to ~1e-8 only.
        np.testing.assert_allclose(ours, trl_advantages(rewards, g, scale), rtol=1e-6, atol=1e-9)
