"""Parameter construction shared by the layers, and their one dense product (`dense`).

Every parameter is an `nnx.Param` whose Flax sharding metadata holds one logical name (or None)
per dimension, from `sleep_jax.axes.LOGICAL_AXES` (`axes.logical_axes(variable)` reads it back).
Flax's eager sharding is off (`eager_sharding=False`: parameters are built before any mesh exists);
`sleep_jax.parallel.rules` maps the names to mesh axes, dropping a mesh axis that does not divide
a dimension (the one rule Flax lacks).
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax.axes import LOGICAL_AXES

DTYPES = ("float32", "bfloat16", "float16")


def dtype_from_name(name: str, field: str) -> jnp.dtype:
    """The jnp dtype for a config string such as "bfloat16"; `field` names the config field."""
    if name not in DTYPES:
        raise ValueError(f"{field}={name!r} must be one of {DTYPES}")
    return jnp.dtype(name)


def make_param(value: jax.Array, logical_axes: tuple) -> nnx.Param:
    """Wrap `value` as a parameter with one logical axis name (or None) per dimension."""
    if len(logical_axes) != value.ndim:
        raise ValueError(f"logical_axes {logical_axes} must name each of the {value.ndim} dims of shape {value.shape}")
    for name in logical_axes:
        if name is not None and name not in LOGICAL_AXES:
            raise ValueError(f"logical axis {name!r} is not one of {LOGICAL_AXES}")
    return nnx.Param(value, out_sharding=tuple(logical_axes), eager_sharding=False)


def dense_param(rngs: nnx.Rngs, shape: tuple, logical_axes: tuple, *, fan_in: int, dtype) -> nnx.Param:
    """A weight drawn from N(0, 1/fan_in) (LeCun normal), so activations keep unit scale."""
    value = jax.random.normal(rngs.params(), shape, jnp.float32) / math.sqrt(fan_in)
    return make_param(value.astype(dtype), logical_axes)


def dense(x: jax.Array, w: jax.Array, contract: int = 1) -> jax.Array:
    """x [..., *in] times w [*in, *out] -> [..., *out], contracting the last `contract` axes of x
    with the first `contract` axes of w, as one 2-D matmul [N, prod(in)] @ [prod(in), prod(out)].

    The same product as `jnp.einsum`, in the form whose weight gradient x^T dy is one dot
    contracting the rows of two row-major operands: with several leading axes (batch, time) left
    in place, XLA's CPU backend first copies dy transposed and then runs a slower dot (~1.45x
    a SwiGLU's forward + backward on one core). The reshapes are free (contiguous axes).
    """
    ins = w.shape[:contract]
    if x.shape[x.ndim - contract:] != ins:
        raise ValueError(f"dense: the last {contract} axes of x {x.shape} must equal the first of w {w.shape}")
    lead, outs = x.shape[:x.ndim - contract], w.shape[contract:]
    size = math.prod(ins)
    return (x.reshape(-1, size) @ w.reshape(size, -1)).reshape(*lead, *outs)


def dense_rows(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., D] times w [out, D] transposed -> [..., out]: a tied LM head (w the embedding table).

    One dot contracting both operands' last axes, as stored: written as x @ w.T, XLA's CPU
    backend copies the whole table transposed on every call (a 16384 x 512 table: 32 MiB written
    and read again per decoded token).
    """
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"dense_rows: the last axis of x {x.shape} must equal the last of w {w.shape}")
    flat = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), w, (((1,), (1,)), ((), ())))
    return flat.reshape(*x.shape[:-1], w.shape[0])
