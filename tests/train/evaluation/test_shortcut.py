"""The shortcut probe: a head on a frozen random encoder finds a copied target, and nothing in noise.

Whether the paper geometry's probe loss falls below the default geometry's
depends on the data (bench/probe.py measures it on phantom CT); these tests
pin the probe itself on inputs with known answers.
"""
import numpy as np
import pytest

from tcpc_train.loops.pretraining import PretrainConfig
from tcpc_train.evaluation.shortcut import ProbeConfig, probe_arrays

CFG = ProbeConfig(PretrainConfig(width=0.0625, steps=200, batch_size=16, lr=1e-2, cube_intensity=0.0))


def _noise(n=160, p=4, c=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, p + 1, c, c, c)).astype(np.float32), [f"case{i // 8}" for i in range(n)]


def test_a_target_copied_into_the_support_is_found():
    cubes, cases = _noise()
    cubes[:, -1] = cubes[:, 2]  # the target is one of its support cubes: a 100 % share, exactly
    r = probe_arrays(cubes, cases, CFG)
    assert r["drop"] > 1.0 and r["held_out_loss"] < r["chance"] - 1.0


def test_an_independent_target_stays_at_chance():
    cubes, cases = _noise()
    r = probe_arrays(cubes, cases, CFG)
    assert r["held_out_loss"] > r["chance"] - 0.25  # no information: the held-out loss cannot fall
    assert r["n_train"] + r["n_held_out"] == 160 and r["n_held_out"] == 6 * 8  # 30 % of 20 cases, whole cases


def test_the_probe_is_reproducible_and_checks_its_input():
    cubes, cases = _noise(n=96)
    assert probe_arrays(cubes, cases, CFG) == probe_arrays(cubes, cases, CFG)
    with pytest.raises(ValueError, match="at least batch_size=16"):
        probe_arrays(cubes[:24], cases[:24], CFG)  # 3 cases: one held out, 8 samples
    with pytest.raises(ValueError, match="one case each"):
        probe_arrays(cubes, cases[:-1], CFG)
