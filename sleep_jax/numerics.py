"""Numerical comparison of arrays: the one error measure the tests and benchmarks report."""
import numpy as np


def rel_rms(actual, expected) -> float:
    """Root-mean-square of ``actual - expected`` relative to the root-mean-square of ``expected``.

    Equal to ``||actual - expected||_2 / ||expected||_2``. Both arrays (numpy or jax, any float
    dtype, bfloat16 included) must have the same shape; they are compared in float64 on the host.
    Returns a dimensionless float; NaN when ``expected`` is all zeros (so ``rel_rms(...) <= tol``
    fails rather than passing vacuously).
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"rel_rms: `actual` shape {actual.shape} must equal `expected` shape "
                         f"{expected.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sqrt(np.mean((actual - expected) ** 2) / np.mean(expected ** 2)))
