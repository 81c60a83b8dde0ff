"""What each Pallas delta-rule kernel costs on an NVIDIA GPU, compiled without one: per-thread
registers, register spills and shared memory (`python -m sleep_jax.bench.delta_rule --resources`).

jax lowers the forward and backward of `pallas_gated_delta_rule(backend="gpu")` for an abstract
GPU; each `pallas_call` becomes a Triton module inside the HLO. The open-source Triton compiler
(the `triton` package) compiles every distinct module for sm_`arch` with the launch settings jax
chose (num_warps, num_stages), and the `ptxas -v` bundled with it reports registers and spills.
No GPU is needed. It is Triton's own pipeline, not the copy inside XLA that runs the kernels on
the GPU, so counts can differ a little there; a kernel that fails to compile here, spills, or needs
more shared memory than the GPU has, is a finding to act on.
"""
import json
import os
import re
import subprocess
import tempfile

import jax
from jax.sharding import use_abstract_mesh
from jaxlib.mlir import ir
from jaxlib.triton import dialect as tt_dialect

from sleep_jax.bench.programs import H100, abstract_gpu, abstract_inputs, failure, forward_and_gradient

# Shared memory per thread block, bytes, by compute capability (sm_90: 227 KiB).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

TRITON_CALL = "__gpu$xla.gpu.triton"
# The Triton release of the GPU machine, with which every kernel compiles (pinned in
# pyproject.toml's `bench` extra; 3.9.0's bundled ptxas rejects the kernels' PTX with exit 255).
KNOWN_GOOD_TRITON = "3.6.0"


def triton_calls(lowered):
    """[(name, module text, {num_warps, num_stages, grid})] of the distinct Triton kernels of a
    lowered jax computation, in program order (the backward's recomputed forward kernels are the
    forward's: same name, launch and grid)."""
    found, seen = [], set()
    context = ir.Context()
    tt_dialect.register_dialect(context)

    def visit(op):
        if op.name == "stablehlo.custom_call" and ir.StringAttr(
                op.attributes["call_target_name"]).value == TRITON_CALL:
            config = ir.DictAttr(op.attributes["mhlo.backend_config"])  # api_version 4: a dict
            value = lambda key: ir.IntegerAttr(config[key]).value
            name = ir.StringAttr(config["name"]).value
            launch = dict(num_warps=value("num_warps"), num_stages=value("num_stages"),
                          grid=[value("grid_x"), value("grid_y"), value("grid_z")])
            key = (name, json.dumps(launch))
            if key not in seen:
                seen.add(key)
                module = ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes, context=context)
                found.append((name, str(module), launch))  # the bytecode as Triton-readable text
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    visit(inner.operation)

    visit(lowered.compiler_ir("stablehlo").operation)
    return found


def lower_kernels(B, T, H, K, V, dtype, sizes, device_kind, chunk_size=64):
    """The jax lowering (for CUDA) of forward + backward of the Pallas delta rule."""
    _, gradient = forward_and_gradient("gpu", sizes=sizes, chunk_size=chunk_size)
    with use_abstract_mesh(abstract_gpu(device_kind)):
        return jax.jit(gradient).trace(*abstract_inputs(B, T, H, K, V, dtype)).lower(
            lowering_platforms=("cuda",))


def ptxas_usage(ptx, arch, ptxas):
    """{registers, spill_store_bytes, spill_load_bytes} from `ptxas -v` on one PTX module."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, f"-arch=sm_{arch}a", "-v", path, "-o", os.devnull],
                              capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{ptxas} -arch=sm_{arch}a exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-300:]}")
    report = done.stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, report)) else 0
    return dict(registers=number(r"Used (\d+) registers"),
                spill_store_bytes=number(r"(\d+) bytes spill stores"),
                spill_load_bytes=number(r"(\d+) bytes spill loads"))


def compiler_version() -> str:
    """"triton X.Y.Z" of the installed Triton compiler (and its bundled ptxas)."""
    import triton
    return f"triton {triton.__version__}"


def compile_kernel(name, module, launch, arch):
    """Triton-compile one kernel module (TTIR text) for sm_`arch`: shared bytes + ptxas usage."""
    import triton  # only this tool needs it
    import triton.backends.nvidia
    from triton.backends.compiler import GPUTarget

    ptxas = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.ttir")  # Triton picks the stage from the suffix
        with open(path, "w") as f:
            f.write(module)
        kernel = triton.compile(path, target=GPUTarget("cuda", arch, 32), options=dict(
            num_warps=launch["num_warps"], num_stages=launch["num_stages"]))
    return dict(shared_bytes=kernel.metadata.shared, **ptxas_usage(kernel.asm["ptx"], arch, ptxas))


def kernel_resources(B, T, H, K, V, dtype, sizes=None, *, chunk_size=64,
                     device_kind=H100, arch=90):
    """One dict per distinct kernel: kernel, num_warps, num_stages, grid, and shared_bytes,
    registers, spill_store_bytes, spill_load_bytes, or `error` (a failed compile, or more shared
    memory than SHARED_LIMIT[arch])."""
    if arch not in SHARED_LIMIT:
        raise ValueError(f"kernel resources: `arch`={arch} not in {sorted(SHARED_LIMIT)}")
    lowered = lower_kernels(B, T, H, K, V, dtype, sizes or {}, device_kind, chunk_size)
    rows = []
    for name, module, launch in triton_calls(lowered):
        row = dict(kernel=name, **launch)
        try:
            row.update(compile_kernel(name, module, launch, arch))
        except Exception as exc:  # noqa: BLE001 -- reported in the row; the other kernels go on
            row["error"] = (f"{failure(exc)} [compiled with {compiler_version()}; known to work: "
                            f"triton {KNOWN_GOOD_TRITON}]")
        else:
            if row["shared_bytes"] > SHARED_LIMIT[arch]:
                row["error"] = f"shared memory {row['shared_bytes']} B > {SHARED_LIMIT[arch]} B"
        rows.append(row)
    return rows
