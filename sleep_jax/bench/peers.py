"""sleep_jax against transformers on the same random Qwen3.5-text, side by side in one process.

    taskset -c 1 env XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python -m sleep_jax.bench.peers [--repeats=5] [--torch_threads=1] [--maxtext_gdn=PATH]

The model (flags for every size; the defaults are the issue's 35M-parameter model): a
`transformers.Qwen3_5ForCausalLM` built from `--seed` (float32, tied embeddings, hidden 512, 8
layers with full attention every 4th, GDN 4 key / 8 value heads of K = V = 64, attention 8 heads /
2 key-value heads of 64, MLP 1536, vocab 16384; its 1-D parameters, norms and decays, moved off
their initial values as the hub parity tests do), saved and read by the project's own hub import
(`hf.from_pretrained`). transformers runs its pure-torch GDN when flash-linear-attention is not
installed (the header says which).

First the agreement: the logits of a forward over the same tokens (every `--forward_shapes` shape)
are compared; if the largest error relative to the largest logit exceeds `--tolerance`, nothing
is timed and the exit status is 1. Then each measurement warms up (compiles) both sides, checks
them against each other, and times them in turns, `--repeats` times, the side that goes first
alternating:

- forward B x T: ours a jitted `model(tokens)`, theirs `model(input_ids)` (no cache), full logits;
- decode at each of `--decode_batches` after a `--prompt`-token prompt: ours `Engine.prefill` of
  each slot, then `Engine.generate` greedy of `--new_tokens` tokens (the timed part; the prefilled
  slots are restored from a snapshot before each repeat), theirs a prefill with the cache, then a
  loop of one-token forwards through `past_key_values` (`generate` is not used: on random models its
  continuation departs from the model's own forward). The tokens must be identical. ms per token;
- prefill (time to first token) of the prompt into a fresh slot: ours `Engine.prefill` with a
  sleep window of `--window` > prompt + new tokens (so no sleep happens), theirs a forward with
  `use_cache=True, logits_to_keep=1` (what its `generate` runs first); ours also times the model's
  own parallel forward of the same tokens (`prefill_over_forward`);
- train B x T: forward + backward of the loss; ours jitted `jax.value_and_grad` of the train step's
  loss (`train.step.model_loss_fn`: `sleep.sequence_loss`, one prediction window over the whole
  sequence, N = 1), theirs `model(input_ids, labels=input_ids).loss.backward()`; loss and global
  gradient norm compared; `page_faults_median`: the minor page faults of one turn of each side
  (a command keeps freed host memory, `parallel.keep_freed_host_memory`: XLA:CPU's temporaries
  are faulted in once, not every step);
- with `--maxtext_gdn=PATH`: the delta rule's chunked forward against MaxText's
  `jax_chunk_gated_delta_rule` read from PATH (`bench.delta_rule.op_ratios`).

Output: one JSON line each. First {"what": "header"} (XLA_FLAGS, torch threads, CPU affinity, load
average, versions, device, model sizes, parameter count); then {"what": "agreement", ...}; then per
measurement {"what", shape fields, "ours_ms", "peer_ms" ({"min", "median"} in ms; per token for
decode), "ratio_min", "ratio_median" (sleep_jax / transformers: below 1 = we are faster),
"repeats", "loadavg", ...}. Exit status 1 when any agreement check fails.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from sleep_jax import cli, hf
from sleep_jax.infer import Engine
from sleep_jax.numerics import rel_rms
from sleep_jax.sleep import SleepConfig
from sleep_jax.train.errors import ConfigError
from sleep_jax.train.step import model_loss_fn

PEER = "transformers"


@dataclasses.dataclass(frozen=True)
class PeerModel:
    """The sizes of the random Qwen3.5-text both sides run (defaults: the issue's model)."""
    hidden: int = 512
    layers: int = 8
    attention_every: int = 4      # layer i is full attention iff (i + 1) % attention_every == 0
    mlp: int = 1536
    vocab: int = 16384
    gdn_key_heads: int = 4
    gdn_value_heads: int = 8
    gdn_head_dim: int = 64        # K = V
    attention_heads: int = 8
    attention_kv_heads: int = 2
    attention_head_dim: int = 64

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if int(getattr(self, field.name)) < 1:
                raise ValueError(f"--{field.name} must be >= 1, got {getattr(self, field.name)}")
        if self.gdn_value_heads % self.gdn_key_heads:
            raise ValueError(f"--gdn_value_heads={self.gdn_value_heads} must be a multiple of "
                             f"--gdn_key_heads={self.gdn_key_heads}")
        if self.attention_heads % self.attention_kv_heads:
            raise ValueError(f"--attention_heads={self.attention_heads} must be a multiple of "
                             f"--attention_kv_heads={self.attention_kv_heads}")

    def layer_types(self) -> list[str]:
        return ["full_attention" if (i + 1) % self.attention_every == 0 else "linear_attention"
                for i in range(self.layers)]


def hub_config(sizes: PeerModel):
    """The `transformers.Qwen3_5TextConfig` of `sizes` (float32, tied embeddings)."""
    import transformers
    return transformers.Qwen3_5TextConfig(
        vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.mlp,
        num_hidden_layers=sizes.layers, layer_types=sizes.layer_types(),
        num_attention_heads=sizes.attention_heads, num_key_value_heads=sizes.attention_kv_heads,
        head_dim=sizes.attention_head_dim, linear_num_key_heads=sizes.gdn_key_heads,
        linear_num_value_heads=sizes.gdn_value_heads, linear_key_head_dim=sizes.gdn_head_dim,
        linear_value_head_dim=sizes.gdn_head_dim, linear_conv_kernel_dim=4, tie_word_embeddings=True,
        dtype="float32")


def build_models(sizes: PeerModel, seed: int, directory: str):
    """(transformers model in eval mode, our HybridModel): a random Qwen3.5-text from `seed` with
    its 1-D parameters (norms, A_log, dt_bias) moved by 0.3 * N(0, 1) off their initial values,
    saved in `directory` and imported by `hf.from_pretrained`."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()     # its kernel fallback notes: the header says `peer_gdn`
    transformers.logging.disable_progress_bar()
    torch.manual_seed(seed)
    peer = transformers.Qwen3_5ForCausalLM(hub_config(sizes)).eval()
    with torch.no_grad():
        for _, p in peer.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    peer.save_pretrained(directory)
    return peer, hf.from_pretrained(directory, dtype="float32", param_dtype="float32")


# ---- timing ----------------------------------------------------------------------------------

def elapsed(fn: Callable, *args) -> tuple[float, object]:
    """(seconds, result) of fn(*args), jax results waited for."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def alternate(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each side over `repeats` turns; each side is a callable that does its own untimed
    set-up and returns the seconds of its timed part. Turn i starts with side i mod len(sides), so
    a change in the machine's load falls on every side alike."""
    names = list(sides)
    seconds = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds[name].append(sides[name]())
    return seconds


def ms(seconds: list[float], per: int = 1) -> dict:
    return {"min": round(1000 * min(seconds) / per, 3), "median": round(1000 * statistics.median(seconds) / per, 3)}


def ratios(ours: list[float], peer: list[float]) -> dict:
    return {"ratio_min": round(min(ours) / min(peer), 3),
            "ratio_median": round(statistics.median(ours) / statistics.median(peer), 3)}


def row(what: str, seconds: dict[str, list[float]], *, per: int = 1, **fields) -> dict:
    """A measurement's JSON row from the seconds of "ours" and "peer" (ms per `per` units)."""
    return {"what": what, **fields, "ours_ms": ms(seconds["ours"], per), "peer_ms": ms(seconds["peer"], per),
            **ratios(seconds["ours"], seconds["peer"]), "repeats": len(seconds["ours"]),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def errors(ours, peer) -> dict:
    """max |ours - peer|, that over max |peer|, and rel_rms (float64)."""
    ours, peer = np.asarray(ours, np.float64), np.asarray(peer, np.float64)
    max_abs = float(np.max(np.abs(ours - peer)))
    return {"max_abs_err": max_abs, "max_rel_err": max_abs / float(np.max(np.abs(peer))),
            "rel_rms": rel_rms(ours, peer)}


# ---- the two sides ---------------------------------------------------------------------------

class Sides:
    """Both models and the programs each measurement runs."""

    def __init__(self, peer, model):
        import torch
        self.torch = torch
        self.peer, self.model = peer, model
        self.graphdef, self.params = nnx.split(model)
        graphdef = self.graphdef
        self._forward = jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens)[0])

    def forward(self, tokens: np.ndarray):
        """Our logits float32 [B, T, V]."""
        return self._forward(self.params, jnp.asarray(tokens, jnp.int32))

    def peer_forward(self, tokens: np.ndarray):
        with self.torch.inference_mode():
            return self.peer(input_ids=self.torch.as_tensor(tokens), use_cache=False).logits

    def peer_prefill(self, tokens: np.ndarray):
        """transformers' first step of generation: (last logits [B, V], cache)."""
        with self.torch.inference_mode():
            out = self.peer(input_ids=self.torch.as_tensor(tokens), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    def peer_greedy(self, cache, logits, new_tokens: int):
        """int [B, new_tokens]: argmax of `logits`, then `new_tokens` one-token forwards through the
        cache (the last one's logits unused, as our engine's last wake step)."""
        torch = self.torch
        with torch.inference_mode():
            tokens = [logits.argmax(-1)]
            for i in range(new_tokens):
                out = self.peer(input_ids=tokens[-1][:, None], past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                if i < new_tokens - 1:
                    tokens.append(out.logits[:, -1].argmax(-1))
        return torch.stack(tokens, 1).numpy()

    def train_step(self, sequence: int):
        """tokens int [B, sequence] -> (loss, gradients): our jitted `jax.value_and_grad` of the train
        step's loss, one prediction window of `sequence` tokens, every position scored."""
        loss_fn = model_loss_fn(self.graphdef, sleep=SleepConfig(passes=1, window=sequence), kinds="P")
        grad = jax.value_and_grad(loss_fn, has_aux=True)

        @jax.jit
        def step(params, tokens):
            (loss, _), grads = grad(params, {"tokens": tokens, "loss_mask": jnp.ones_like(tokens)})
            return loss, grads

        return lambda tokens: step(self.params, jnp.asarray(tokens, jnp.int32))

    def peer_train_step(self, tokens: np.ndarray):
        """transformers' loss (a float) after its backward; the gradients stay on the parameters."""
        x = self.torch.as_tensor(tokens)
        loss = self.peer(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        return float(loss.detach())

    def peer_grad_norm(self) -> float:
        return float(np.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in self.peer.parameters())))


# ---- measurements ----------------------------------------------------------------------------

def shape(text: str, flag: str) -> tuple[int, int]:
    """"BxT" -> (B, T); a ValueError naming `flag` for anything else."""
    try:
        b, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{flag}: shape {text!r} must be BxT, e.g. 4x512") from None
    if b < 1 or t < 1:
        raise ValueError(f"{flag}: shape {text!r}: B and T must be >= 1")
    return b, t


def random_tokens(rng: np.random.Generator, vocab: int, b: int, t: int) -> np.ndarray:
    return rng.integers(0, vocab, (b, t)).astype(np.int64)


def agreement(sides: Sides, inputs: dict[str, np.ndarray], tolerance: float) -> dict:
    """The logits of both forwards over each input (this also compiles ours)."""
    worst = {}
    for name, tokens in inputs.items():
        found = errors(sides.forward(tokens), sides.peer_forward(tokens).numpy())
        worst = {key: max(worst.get(key, 0.0), value) for key, value in found.items()}
    return {"what": "agreement", "forward_shapes": list(inputs), **{k: float(f"{v:.3g}") for k, v in worst.items()},
            "tolerance": tolerance, "ok": worst["max_rel_err"] <= tolerance}


def forward_row(sides: Sides, name: str, tokens: np.ndarray, repeats: int) -> dict:
    seconds = alternate({"ours": lambda: elapsed(sides.forward, tokens)[0],
                         "peer": lambda: elapsed(sides.peer_forward, tokens)[0]}, repeats)
    return row("forward", seconds, shape=name)


def decode_row(sides: Sides, engine: Engine, prompts: np.ndarray, new_tokens: int, repeats: int,
               directory: str) -> dict:
    """ms per token of greedy decoding after the prompts int [B, P] (engine slots = B)."""
    batch = prompts.shape[0]
    slots = list(range(batch))
    for slot in slots:
        engine.reset(slot)
        engine.prefill(slot, prompts[slot])
        engine.snapshot(slot, os.path.join(directory, f"slot{slot}.safetensors"))
    logits, cache = sides.peer_prefill(prompts)
    want = sides.peer_greedy(cache, logits, new_tokens)
    generated = []

    def ours():
        for slot in slots:
            engine.restore(slot, os.path.join(directory, f"slot{slot}.safetensors"))
        seconds, tokens = elapsed(engine.generate, slots, new_tokens)
        generated.append(tokens)
        return seconds

    def peer():
        logits, cache = sides.peer_prefill(prompts)
        seconds, tokens = elapsed(sides.peer_greedy, cache, logits, new_tokens)
        generated.append(tokens)
        return seconds

    ours(), peer()   # warm-up: compiles the engine's step and restore
    seconds = alternate({"ours": ours, "peer": peer}, repeats)
    identical = all(np.array_equal(tokens, want) for tokens in generated)
    return row("decode", seconds, per=new_tokens, batch=batch, prompt=prompts.shape[1], new_tokens=new_tokens,
               tokens_identical=identical, sleeps=engine.stats["sleeps"], ok=identical and engine.stats["sleeps"] == 0)


def prefill_row(sides: Sides, engine: Engine, prompt: np.ndarray, repeats: int, tolerance: float) -> dict:
    """Time to first token of prompt int [P] in slot 0, and our own parallel forward of it."""
    def prefill():
        engine.reset(0)
        return elapsed(engine.prefill, 0, prompt)

    _, ours_logits = prefill()                        # warm-up (compiles)
    peer_logits = sides.peer_prefill(prompt[None])[0][0].numpy()
    sides.forward(prompt[None])
    found = errors(ours_logits, peer_logits)
    seconds = alternate({"ours": lambda: prefill()[0],
                         "peer": lambda: elapsed(sides.peer_prefill, prompt[None])[0],
                         "ours_forward": lambda: elapsed(sides.forward, prompt[None])[0]}, repeats)
    return row("prefill", seconds, prompt=prompt.size, window=engine.sleep.window,
               ours_forward_ms=ms(seconds["ours_forward"]),
               prefill_over_forward_min=round(min(seconds["ours"]) / min(seconds["ours_forward"]), 3),
               prefill_over_forward_median=round(statistics.median(seconds["ours"])
                                                 / statistics.median(seconds["ours_forward"]), 3),
               max_rel_err=float(f"{found['max_rel_err']:.3g}"), sleeps=engine.stats["sleeps"],
               ok=found["max_rel_err"] <= tolerance and engine.stats["sleeps"] == 0)


def train_row(sides: Sides, name: str, tokens: np.ndarray, repeats: int, tolerance: float) -> dict:
    step = sides.train_step(tokens.shape[1])
    loss, grads = step(tokens)                        # warm-up (compiles)
    sides.peer.zero_grad(set_to_none=True)
    peer_loss = sides.peer_train_step(tokens)
    loss_err = abs(float(loss) - peer_loss) / abs(peer_loss)
    norm_err = abs(float(optax.tree.norm(grads)) / sides.peer_grad_norm() - 1)

    def peer():
        sides.peer.zero_grad(set_to_none=True)
        return elapsed(sides.peer_train_step, tokens)[0]

    faults = {"ours": [], "peer": []}

    def counted(side: str, fn: Callable[[], float]) -> Callable[[], float]:
        def run():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds = fn()
            faults[side].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            return seconds
        return run

    seconds = alternate({"ours": counted("ours", lambda: elapsed(step, tokens)[0]), "peer": counted("peer", peer)},
                        repeats)
    return row("train", seconds, shape=name, loss=round(float(loss), 5), loss_rel_err=float(f"{loss_err:.3g}"),
               grad_norm_rel_err=float(f"{norm_err:.3g}"), ok=max(loss_err, norm_err) <= tolerance,
               page_faults_median={side: int(statistics.median(f)) for side, f in faults.items()})


def maxtext_row(path: str, repeats: int) -> dict | None:
    """{"what": "op_forward_vs_maxtext", ...} from `bench.delta_rule.op_ratios` (its fields: ours /
    MaxText's forward and forward + backward times and ratios), or None after a one-line error on
    stderr when this checkout has no such function, or it refuses the file (not MaxText's
    function, or one that disagrees with ours)."""
    try:
        from sleep_jax.bench.delta_rule import op_ratios
    except ImportError as error:
        print(f"--maxtext_gdn: sleep_jax.bench.delta_rule.op_ratios is not available here ({error})",
              file=sys.stderr, flush=True)
        return None
    try:
        found = op_ratios(path, repeats=repeats)
    except ValueError as error:
        print(f"--maxtext_gdn={path}: {error}", file=sys.stderr, flush=True)
        return None
    return {"what": "op_forward_vs_maxtext", **found, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def header(sizes: PeerModel, model, seed: int, repeats: int) -> dict:
    import torch
    import transformers
    return {
        "what": "header", "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "peer_gdn": "torch" if not any(importlib.util.find_spec(p) for p in ("fla", "causal_conv1d")) else
                    "fla / causal_conv1d kernels installed",
        "model": dataclasses.asdict(sizes),
        "parameters": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))),
        "seed": seed, "repeats": repeats, "dtype": "float32",
    }


def check_settings(*, repeats, prompt, new_tokens, window, decode_batches, forward_shapes,
                   train_shape) -> dict[str, tuple[int, int]]:
    """{"BxT": (B, T)} of the forward and train shapes; a ValueError naming the flag for a bad setting."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if window <= prompt + new_tokens:
        raise ValueError(f"--window={window} must be > --prompt + --new_tokens = {prompt + new_tokens}: the "
                         f"engine must not sleep while measured (it sleeps when a window is full)")
    if not decode_batches or min(decode_batches) < 1:
        raise ValueError(f"--decode_batches={list(decode_batches)} must be batch sizes >= 1")
    return {**{name: shape(name, "--forward_shapes") for name in forward_shapes},
            train_shape: shape(train_shape, "--train_shape")}


def run(sizes: PeerModel, *, seed: int = 0, repeats: int = 5, forward_shapes=("1x2048", "4x512"),
        prompt: int = 512, new_tokens: int = 64, decode_batches=(1, 4), train_shape: str = "4x512",
        window: int = 640, tolerance: float = 1e-4, maxtext_gdn: str = "",
        emit: Callable[[dict], None] = lambda r: print(json.dumps(r), flush=True)) -> int:
    """Build, check, time; each row goes to `emit`. Returns the exit status: 1 if an agreement
    check failed (then the first failure is the last row: nothing after it is timed) or the
    MaxText comparison could not run, else 0."""
    shapes = check_settings(repeats=repeats, prompt=prompt, new_tokens=new_tokens, window=window,
                            decode_batches=decode_batches, forward_shapes=forward_shapes, train_shape=train_shape)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as directory:
        peer, model = build_models(sizes, seed, directory)
        sides = Sides(peer, model)
        emit(header(sizes, model, seed, repeats))
        inputs = {name: random_tokens(rng, sizes.vocab, *shapes[name]) for name in forward_shapes}
        check = agreement(sides, inputs, tolerance)
        emit(check)
        if not check["ok"]:
            return 1
        for name, tokens in inputs.items():
            emit(forward_row(sides, name, tokens, repeats))
        sleep = SleepConfig(passes=1, window=window, eviction="hard")
        engines = {}
        for batch in decode_batches:
            engines[batch] = Engine(model, sleep, slots=batch)
            result = decode_row(sides, engines[batch], random_tokens(rng, sizes.vocab, batch, prompt), new_tokens,
                                repeats, directory)
            emit(result)
            if not result["ok"]:
                return 1
        engine = engines.get(1) or Engine(model, sleep, slots=1)
        result = prefill_row(sides, engine, random_tokens(rng, sizes.vocab, 1, prompt)[0], repeats, tolerance)
        emit(result)
        if not result["ok"]:
            return 1
        result = train_row(sides, train_shape, random_tokens(rng, sizes.vocab, *shapes[train_shape]), repeats,
                           tolerance)
        emit(result)
        if not result["ok"]:
            return 1
    if maxtext_gdn:
        result = maxtext_row(maxtext_gdn, repeats)
        if result is None:
            return 1
        emit(result)
    return 0


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (names distinct from `bench.delta_rule`'s module-level flags, which
    `--maxtext_gdn` imports)."""
    for field in dataclasses.fields(PeerModel):
        flags.DEFINE_integer(field.name, field.default, f"Model: {field.name}.", lower_bound=1,
                             flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the model and the tokens.", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 5, "Timed turns per side.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("torch_threads", 1, "torch.set_num_threads (XLA's threads: the XLA_FLAGS "
                         "environment variable).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_list("forward_shapes", ["1x2048", "4x512"], "Forward shapes BxT.", flag_values=flag_values)
    flags.DEFINE_integer("prompt", 512, "Prompt tokens before decoding, and the prefill's.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("new_tokens", 64, "Greedy tokens decoded.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_list("decode_batches", ["1", "4"], "Decode batch sizes (engine slots).", flag_values=flag_values)
    flags.DEFINE_string("train_shape", "4x512", "Train step shape BxT.", flag_values=flag_values)
    flags.DEFINE_integer("window", 640, "The engine's sleep window: > prompt + new_tokens.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_float("tolerance", 1e-4, "Largest max |error| / max |logit| (and relative loss and "
                       "gradient-norm error) accepted.", flag_values=flag_values)
    flags.DEFINE_string("maxtext_gdn", "", "A file holding MaxText's jax_chunk_gated_delta_rule: also time "
                        "the delta rule's forward against it.", flag_values=flag_values)


def main(argv):
    del argv
    import torch
    FLAGS = flags.FLAGS
    try:   # every setting checked before anything is built: a bad one is one line naming its flag
        sizes = PeerModel(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(PeerModel)})
        if not all(b.strip().isdigit() for b in FLAGS.decode_batches):
            raise ValueError(f"--decode_batches={','.join(FLAGS.decode_batches)} must be batch sizes >= 1")
        settings = dict(repeats=FLAGS.repeats, prompt=FLAGS.prompt, new_tokens=FLAGS.new_tokens, window=FLAGS.window,
                        decode_batches=tuple(int(b) for b in FLAGS.decode_batches),
                        forward_shapes=tuple(FLAGS.forward_shapes), train_shape=FLAGS.train_shape)
        check_settings(**settings)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    torch.set_num_threads(FLAGS.torch_threads)
    sys.exit(run(sizes, **settings, seed=FLAGS.seed, tolerance=FLAGS.tolerance, maxtext_gdn=FLAGS.maxtext_gdn))


if __name__ == "__main__":
    cli.run(main, define_flags)
