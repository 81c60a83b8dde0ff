"""rel_rms: the relative RMS error that the delta-rule tests, the train-step test and the bench use."""
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.numerics import rel_rms


def test_known_values():
    expected = np.array([3.0, -4.0])  # rms 5 / sqrt(2)
    assert rel_rms(expected, expected) == 0.0
    assert rel_rms(expected * 1.01, expected) == pytest.approx(0.01, rel=1e-12)
    assert rel_rms(np.array([3.0, -3.0]), expected) == pytest.approx(1 / 5, rel=1e-12)
    assert rel_rms(np.zeros(2), expected) == pytest.approx(1.0, rel=1e-12)


def test_is_the_relative_l2_norm_and_takes_jax_bfloat16():
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((3, 5, 7)).astype(np.float32)
    actual = expected + 1e-3 * rng.standard_normal(expected.shape).astype(np.float32)
    want = np.linalg.norm((actual - expected).astype(np.float64)) / np.linalg.norm(expected.astype(np.float64))
    assert rel_rms(actual, expected) == pytest.approx(want, rel=1e-12)
    bf16 = jnp.asarray(expected, jnp.bfloat16)
    assert 0 < rel_rms(bf16, jnp.asarray(expected)) <= 2 ** -8  # bfloat16 keeps 8 significant bits


def test_all_zero_expected_never_passes_a_tolerance():
    assert np.isnan(rel_rms(np.zeros(4), np.zeros(4)))
    assert not rel_rms(np.ones(4), np.zeros(4)) <= 1.0


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"`actual` shape \(2, 3\) must equal `expected` shape \(3,\)"):
        rel_rms(np.zeros((2, 3)), np.ones(3))
