"""Benchmark of the gated delta rule: forward and forward+backward median time and TFLOP/s.

    python -m sleep_jax.bench.delta_rule                       # anchor shapes, bf16, H=16, K=V=128
    python -m sleep_jax.bench.delta_rule --shapes=1x256 --heads=2 --head_dim_k=32 --head_dim_v=32 \
        --iters=3                                             # a small shape (CPU)

With --check it times nothing and instead compares pallas against float32 chunked (see `check`).
With --resources it runs nothing: it compiles the GPU kernels for sm_--arch with Triton, no GPU
needed, and prints registers, spills and shared memory per kernel (see `kernel_resources.py`).
With --against=PATH it times `gated_delta_rule(impl="chunked")` against the function
`jax_chunk_gated_delta_rule` of the Python file PATH (MaxText's signature and [B, T, H, D] layout,
e.g. a standalone copy of MaxText's, kept outside this package), float32, alternating the two, and
prints one JSON line per shape from `op_ratios` (ratio = sleep_jax / peer; min and median over --iters).
With --tpu_compile=v5e:2x2 it compiles forward and forward+backward for that TPU with the TPU
compiler, no TPU needed (libtpu; see `tpu_compile.py`).
Tuning on an accelerator (one JSON line per block-size set, then per kernel):
    python -m sleep_jax.bench.delta_rule --impls=pallas --sizes=block_v=32 \
        --sizes=block_v=128,num_warps=8 --per_kernel

Prints one JSON line per (shape, impl): impl, backend, device, dtype, B, T, H, K, V, chunk_size,
fwd_ms, fwd_bwd_ms (medians), fwd_tflops, fwd_bwd_tflops, and `interpret` (true where the Pallas
kernels ran in the interpreter: CPU; those times are not kernel performance). Pallas rows timed with
--sizes overrides carry `sizes`; --per_kernel adds rows `kernel` and `ms` for each Pallas kernel
alone. A configuration that fails (a Triton compile error, say) prints a row with `error` instead
and the run goes on; the exit status is then 1. `--impls` may include
`fla` (flash-linear-attention's Triton `chunk_gated_delta_rule` through torch on the GPU); it is
measured when torch, triton and fla import, and reported as skipped otherwise.

TFLOP/s use one nominal count for every impl (so ratios are time ratios): the matmul work of the
chunked algorithm per chunk of C tokens and head, 2*C^2*(3K + 2V) (k k^T, w, u, q k^T, P v_new)
plus 6*C*K*V (w S, the state update, q S); forward+backward counts 3x the forward.
The backward differentiates sum(o * do) + sum(final_state * d_final_state) w.r.t. q, k, v, g, beta.
"""
import functools
import importlib.util
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from sleep_jax import cli
from sleep_jax.bench.kernel_resources import kernel_resources
from sleep_jax.bench.programs import failure
from sleep_jax.bench.tpu_compile import tpu_compile
from sleep_jax.numerics import rel_rms
from sleep_jax.ops import gated_delta_rule
from sleep_jax.ops.delta_rule.pallas import backward, forward
from sleep_jax.ops.delta_rule.pallas.api import kernel_inputs, pallas_gated_delta_rule
from sleep_jax.ops.delta_rule.pallas.block_sizes import block_sizes, parse_overrides

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["8x4096", "1x32768"], "BxT pairs.")
flags.DEFINE_integer("heads", 16, "Heads H (key and value heads).")
flags.DEFINE_integer("head_dim_k", 128, "K.")
flags.DEFINE_integer("head_dim_v", 128, "V.")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "dtype of q, k, v.")
flags.DEFINE_integer("chunk_size", 64, "Chunk size of the chunked forms.")
flags.DEFINE_list("impls", ["chunked", "pallas", "fla"], "Impls: chunked, pallas, recurrent, fla.")
flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
flags.DEFINE_integer("iters", 20, "Timed calls; the median is reported.")
flags.DEFINE_bool("check", False, "Instead of timing: compare `pallas` in --dtype against `chunked` "
                  "in float32 (outputs, final state, all gradients) at each shape; exit 1 if any "
                  "relative RMS exceeds --check_tol.")
flags.DEFINE_float("check_tol", 1e-2, "Largest relative RMS that --check accepts.")
flags.DEFINE_multi_string("sizes", [], "Pallas block-size overrides to time, one set per flag, e.g. "
                          "'block_v=32,num_warps=8' (keys of pallas.block_sizes). Each set adds a "
                          "pallas row after the impls' rows.")
flags.DEFINE_bool("resources", False, "Instead of timing: compile the Pallas kernels for an NVIDIA GPU "
                  "(sm_--arch) with the `triton` package, no GPU needed, and print each kernel's "
                  "registers, spills and shared memory, for the GPU defaults and each --sizes set; "
                  "exit 1 if one fails to compile or needs too much shared memory.")
flags.DEFINE_integer("arch", 90, "--resources: compute capability (90: H100, H200).")
flags.DEFINE_string("tpu_compile", "", "Instead of timing: compile forward and forward+backward for "
                    "this compile-only TPU topology (e.g. v5e:2x2, v6e:2x2, v4:2x2x1; needs "
                    "libtpu), for the TPU defaults and each --sizes set; exit 1 if one fails.")
flags.DEFINE_string("against", "", "Instead of the impls: time the chunked op against the function "
                    "`jax_chunk_gated_delta_rule` of this Python file (MaxText's signature), float32, "
                    "K = V = --head_dim_k, --iters alternating rounds; one JSON line of ratios per shape.")
flags.DEFINE_bool("per_kernel", False, "Also time each Pallas kernel alone (wy_prep, recurrence, "
                  "output, reverse_recurrence, chunk_gradients) with the default block sizes and "
                  "with each --sizes set.")


def nominal_flops(B, T, H, K, V, chunk):
    """Forward matmul FLOPs of the chunked algorithm (see module docstring)."""
    chunks = -(-T // chunk)
    per_chunk = 2 * chunk * chunk * (3 * K + 2 * V) + 6 * chunk * K * V
    return B * H * chunks * per_chunk


def make_inputs(B, T, H, K, V, dtype, seed=0):
    """q, k (L2-normalised), v in `dtype`; g = log forget gate and beta as the model makes them."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 7)
    q = jax.random.normal(keys[0], (B, T, H, K))
    k = jax.random.normal(keys[1], (B, T, H, K))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(keys[2], (B, T, H, V))
    g = -jax.nn.softplus(jax.random.normal(keys[3], (B, T, H)))
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], (B, T, H)))
    do = jax.random.normal(keys[5], (B, T, H, V)).astype(dtype)
    d_final = jax.random.normal(keys[6], (B, H, K, V))
    return (q.astype(dtype), k.astype(dtype), v.astype(dtype), g, beta), do, d_final


def median_ms(fn, args, warmup, iters):
    jax.block_until_ready(fn(*args))  # compile
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_jax(impl, inputs, do, d_final, chunk, warmup, iters, sizes=None):
    """(forward ms, forward+backward ms) of `gated_delta_rule(impl=...)`; with `sizes`, of the
    Pallas kernels with those block-size overrides (initial state zero, scale K^-0.5, as there)."""
    def forward(q, k, v, g, beta):
        if sizes is None:
            return gated_delta_rule(q, k, v, g, beta, output_final_state=True, impl=impl,
                                    chunk_size=chunk)
        B, _, H, K = q.shape
        state = jnp.zeros((B, H, K, v.shape[-1]), jnp.float32)
        return pallas_gated_delta_rule(q, k, v, g, beta, scale=K ** -0.5, initial_state=state,
                                       chunk_size=chunk, sizes=sizes)

    def loss(q, k, v, g, beta):
        o, final_state = forward(q, k, v, g, beta)
        return jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32)) + jnp.sum(final_state * d_final)

    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    return median_ms(fwd, inputs, warmup, iters), median_ms(fwd_bwd, inputs, warmup, iters)


def time_kernels(inputs, do, chunk, warmup, iters, sizes=None):
    """{kernel name: median ms} of each Pallas kernel alone, on kernel-layout inputs (initial
    state zero, scale K^-0.5), the backward kernels on d_o = `do`."""
    B, _, H, K = inputs[0].shape
    zero_state = jnp.zeros((B, H, K, inputs[2].shape[-1]), jnp.float32)
    layout = functools.partial(kernel_inputs, initial_state=zero_state, scale=K ** -0.5,
                               chunk_size=chunk, sizes=sizes)
    (q, k, v, gc, beta, state), cfg = layout(*inputs)
    d_o = layout(inputs[0], inputs[1], do, *inputs[3:])[0][2]
    kernels = {
        "wy_prep": jax.jit(lambda *a: forward.wy_prep(*a, cfg)),
        "recurrence": jax.jit(lambda *a: forward.recurrence(*a, cfg)),
        "output": jax.jit(lambda *a: forward.output(*a, v.dtype, cfg)),
        "reverse_recurrence": jax.jit(lambda *a: backward.reverse_recurrence(*a, cfg)),
        "chunk_gradients": jax.jit(lambda *a: backward.chunk_gradients(*a, cfg)),
    }
    w, u = kernels["wy_prep"](k, v, beta, gc)
    h, v_new, _ = kernels["recurrence"](w, u, k, gc, state)
    dh, d_v_new, _ = kernels["reverse_recurrence"](q, k, w, d_o, gc, state)
    arguments = {"wy_prep": (k, v, beta, gc), "recurrence": (w, u, k, gc, state),
                 "output": (q, k, v_new, h, gc), "reverse_recurrence": (q, k, w, d_o, gc, state),
                 "chunk_gradients": (q, k, v, beta, gc, h, dh, v_new, d_v_new, d_o)}
    return {name: median_ms(fn, arguments[name], warmup, iters) for name, fn in kernels.items()}


def time_fla(inputs, do, d_final):
    """flash-linear-attention on the same values (torch tensors on the GPU); None if unavailable."""
    try:
        import numpy as np
        import torch
        import triton.testing
        import fla.ops.common.chunk_o as fla_chunk_o
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    # fla 0.6.0 refuses its gated backward on Hopper with Triton < 3.7.1 (fla issue #640, wrong
    # gradients there). Timing only: never use these gradients as a reference.
    fla_chunk_o.TRITON_ABOVE_3_7_1 = True
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[str(inputs[0].dtype)]

    def to_torch(x, dt):
        return torch.from_numpy(np.asarray(jnp.asarray(x, jnp.float32))).to("cuda", dt)

    q, k, v = (to_torch(x, dtype).requires_grad_() for x in inputs[:3])
    g, beta = (to_torch(x, torch.float32).requires_grad_() for x in inputs[3:])
    do_t, d_final_t = to_torch(do, dtype), to_torch(d_final, torch.float32)
    leaves = [q, k, v, g, beta]

    def forward():
        return chunk_gated_delta_rule(q=q, k=k, v=v, g=g, beta=beta, output_final_state=True)

    def forward_backward():
        o, final_state = forward()
        torch.autograd.backward((o, final_state), (do_t, d_final_t))

    with torch.no_grad():
        fwd = triton.testing.do_bench(forward, return_mode="median")
    fwd_bwd = triton.testing.do_bench(forward_backward, grad_to_none=leaves, return_mode="median")
    return fwd, fwd_bwd


def check(inputs, do, d_final, chunk):
    """Relative RMS of pallas (inputs' dtype) against chunked (float32) for o, the final state and
    the gradients of sum(o * do) + sum(final_state * d_final) w.r.t. q, k, v, g, beta."""
    def outputs_and_grads(impl, args):
        def loss(*args):
            o, final_state = gated_delta_rule(*args, output_final_state=True, impl=impl,
                                              chunk_size=chunk)
            value = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32))
            return value + jnp.sum(final_state * d_final), (o, final_state)
        (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)
        return (*outs, *grads)

    got = outputs_and_grads("pallas", inputs)
    want = outputs_and_grads("chunked", [x.astype(jnp.float32) for x in inputs])
    names = ("o", "final_state", "d_q", "d_k", "d_v", "d_g", "d_beta")
    return {name: rel_rms(a, b) for name, a, b in zip(names, got, want)}


PEER_FUNCTION = "jax_chunk_gated_delta_rule"
PEER_TOLERANCE = 1e-4  # largest relative RMS of outputs and gradients between the two sides


def load_peer(path: str):
    """`jax_chunk_gated_delta_rule(query, key, value, g, beta, chunk_size=64, initial_state=None,
    ...) -> (output, final_state)` of the Python file at `path`, imported as a module of its own."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"--against: {path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"_peer_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, PEER_FUNCTION, None)):
        raise ValueError(f"--against: {path!r} defines no function `{PEER_FUNCTION}`")
    return getattr(module, PEER_FUNCTION)


def _forward_and_gradient(forward, do, d_final):
    """jitted forward (q, k, v, g, beta) -> (o, final state) and the gradients of
    sum(o * do) + sum(final_state * d_final) w.r.t. q, k, v, g, beta."""
    def loss(*args):
        o, final_state = forward(*args)
        return jnp.sum(o * do) + jnp.sum(final_state * d_final)

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def _alternating_ms(fns, args, repeats):
    """Wall ms of each of `fns` on `args`, `repeats` rounds of one call each, the fns alternating
    within a round (after one untimed call each). Returns one list of times per fn."""
    for fn in fns:
        jax.block_until_ready(fn(*args))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            fn_times.append((time.perf_counter() - start) * 1e3)
    return times


def op_ratios(path: str, *, batch=2, steps=2048, heads=4, head_dim=64, repeats=5) -> dict:
    """`gated_delta_rule(impl="chunked")` against the peer function of the file `path` (see
    `load_peer`), float32, chunk 64, K = V = head_dim, zero initial state, both returning the final
    state. Checks first that outputs, final states and the gradients of every input agree within
    PEER_TOLERANCE (relative RMS; ValueError otherwise), then times forward and forward+backward,
    alternating the two sides. Returns JSON-ready numbers: the shape, fwd_ms_* / fwd_bwd_ms_* (ours)
    and peer_fwd_ms_* / peer_fwd_bwd_ms_* (min, median), fwd_ratio_* / fwd_bwd_ratio_* (ours / peer),
    `repeats` and `max_rel_rms` (the largest disagreement checked)."""
    peer = load_peer(path)
    inputs, do, d_final = make_inputs(batch, steps, heads, head_dim, head_dim, jnp.float32)
    zero_state = jnp.zeros(d_final.shape, jnp.float32)

    def ours(q, k, v, g, beta):
        return gated_delta_rule(q, k, v, g, beta, initial_state=zero_state, output_final_state=True,
                                impl="chunked", chunk_size=64)

    def theirs(q, k, v, g, beta):
        return peer(q, k, v, g, beta, chunk_size=64, initial_state=zero_state)

    (fwd, fwd_bwd), (peer_fwd, peer_fwd_bwd) = (_forward_and_gradient(f, do, d_final) for f in (ours, theirs))
    got, want = (*fwd(*inputs), *fwd_bwd(*inputs)), (*peer_fwd(*inputs), *peer_fwd_bwd(*inputs))
    names = ("o", "final_state", "d_q", "d_k", "d_v", "d_g", "d_beta")
    errors = {name: rel_rms(a, b) for name, a, b in zip(names, got, want)}
    if not all(e <= PEER_TOLERANCE for e in errors.values()):   # NaN fails too
        raise ValueError(f"op_ratios: {path!r} disagrees with the chunked op (relative RMS {errors}, "
                         f"tolerance {PEER_TOLERANCE})")
    row = dict(B=batch, T=steps, H=heads, K=head_dim, V=head_dim, dtype="float32", chunk_size=64,
               repeats=repeats, max_rel_rms=_significant(max(errors.values())))
    for kind, pair in (("fwd", (fwd, peer_fwd)), ("fwd_bwd", (fwd_bwd, peer_fwd_bwd))):
        mine, peers = _alternating_ms(pair, inputs, repeats)
        for stat, reduce in (("min", min), ("median", statistics.median)):
            row[f"{kind}_ms_{stat}"] = _significant(reduce(mine))
            row[f"peer_{kind}_ms_{stat}"] = _significant(reduce(peers))
            row[f"{kind}_ratio_{stat}"] = round(reduce(mine) / reduce(peers), 4)
    return row


def _significant(x):
    return float(f"{x:.4g}")


def _sized(sizes):
    """The `sizes` field of a row timed or compiled with block-size overrides (none: defaults)."""
    return {} if sizes is None else {"sizes": sizes}


def main(argv):
    del argv
    backend = jax.default_backend()
    device = jax.devices()[0].device_kind
    dtype = jnp.dtype(FLAGS.dtype)
    H, K, V, C = FLAGS.heads, FLAGS.head_dim_k, FLAGS.head_dim_v, FLAGS.chunk_size
    size_sets = [parse_overrides(text) for text in FLAGS.sizes]
    sizes_backend = "gpu" if FLAGS.resources else "tpu" if FLAGS.tpu_compile else backend
    known = block_sizes(sizes_backend)
    for sizes in size_sets:
        if set(sizes) - set(known):
            raise app.UsageError(f"--sizes: unknown keys {sorted(set(sizes) - set(known))} for "
                                 f"backend {sizes_backend!r}; known: {sorted(known)}")
    failed = False

    def emit(row):
        print(json.dumps(row), flush=True)

    for shape in FLAGS.shapes:
        B, T = (int(x) for x in shape.lower().split("x"))
        common = dict(backend=backend, device=device, dtype=dtype.name, B=B, T=T, H=H, K=K, V=V,
                      chunk_size=C)
        if FLAGS.resources or FLAGS.tpu_compile:  # compile only, for sizes_backend
            target = f"sm_{FLAGS.arch}" if FLAGS.resources else FLAGS.tpu_compile
            for sizes in [None, *size_sets]:
                rows = (kernel_resources(B, T, H, K, V, dtype, sizes, chunk_size=C, arch=FLAGS.arch)
                        if FLAGS.resources else
                        tpu_compile(FLAGS.tpu_compile, B, T, H, K, V, dtype, sizes, chunk_size=C))
                for row in rows:
                    emit({**common, "backend": sizes_backend, "device": f"{target} (compiled only)",
                          **_sized(sizes), **row})
                    failed = failed or "error" in row
            continue
        if FLAGS.against:
            if K != V:
                raise app.UsageError(f"--against: --head_dim_k={K} must equal --head_dim_v={V}")
            emit({"against": FLAGS.against, "backend": backend, "device": device,
                  **op_ratios(FLAGS.against, batch=B, steps=T, heads=H, head_dim=K, repeats=FLAGS.iters)})
            continue
        inputs, do, d_final = make_inputs(B, T, H, K, V, dtype)
        flops = nominal_flops(B, T, H, K, V, C)
        if FLAGS.check:
            row = dict(check="pallas_vs_chunked_float32", **common, tol=FLAGS.check_tol)
            try:
                errors = check(inputs, do, d_final, C)
            except Exception as exc:  # noqa: BLE001 -- reported as a row; the run goes on
                emit({**row, "passed": False, "error": failure(exc)})
                failed = True
                continue
            ok = all(e <= FLAGS.check_tol for e in errors.values())
            emit({**row, "passed": ok, "rel_rms": errors})
            failed = failed or not ok
            continue
        runs = [(impl, None) for impl in FLAGS.impls] + [("pallas", sizes) for sizes in size_sets]
        for impl, sizes in runs:
            row = dict(impl=impl, **common, interpret=(impl == "pallas" and backend == "cpu"),
                       **_sized(sizes))
            try:
                if impl == "fla":
                    times = time_fla(inputs, do, d_final)
                    if times is None:
                        emit({**row, "skipped": "torch/triton/fla or CUDA not available"})
                        continue
                else:
                    times = time_jax(impl, inputs, do, d_final, C, FLAGS.warmup, FLAGS.iters, sizes)
            except Exception as exc:  # noqa: BLE001
                emit({**row, "error": failure(exc)})
                failed = True
                continue
            fwd_ms, fwd_bwd_ms = times
            emit({**row, "fwd_ms": _significant(fwd_ms), "fwd_bwd_ms": _significant(fwd_bwd_ms),
                  "fwd_tflops": _significant(flops / fwd_ms / 1e9),
                  "fwd_bwd_tflops": _significant(3 * flops / fwd_bwd_ms / 1e9)})
        if FLAGS.per_kernel:
            for sizes in [None, *size_sets]:
                row = dict(impl="pallas", **common, interpret=backend == "cpu", **_sized(sizes))
                try:
                    times = time_kernels(inputs, do, C, FLAGS.warmup, FLAGS.iters, sizes)
                except Exception as exc:  # noqa: BLE001
                    emit({**row, "kernel": "all", "error": failure(exc)})
                    failed = True
                    continue
                for kernel, ms in times.items():
                    emit({**row, "kernel": kernel, "ms": _significant(ms)})
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
