"""The engine against the training path and against token-by-token reading, batched sleep against
one slot at a time, its bad-input errors and its snapshots."""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.infer import Engine, Sampling
from sleep_jax.infer import engine as engine_lib
from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.numerics import rel_rms
from sleep_jax.sleep import SleepConfig, sequence_logits, sequence_loss, sequence_scores

WINDOW = 4


def tiny_model(seed=0, **overrides) -> HybridModel:
    fields = dict(vocab_size=13, d_model=16, pattern="AGAG", loop=(1, 3), attn_heads=2, attn_kv_heads=1,
                  attn_head_dim=8, gdn_heads=1, gdn_v_heads=2, gdn_head_dim=8, gdn_v_head_dim=4, mlp_hidden=32,
                  delta_rule_impl="recurrent", chunk_size=16)
    return HybridModel(ModelConfig(**{**fields, **overrides}), rngs=nnx.Rngs(seed))


def training_logits(model, stream, sleep):
    """float32 [B, T, V]: each position's logits as training sees them, its window a prediction
    window after consolidation windows ("C" * w + "P")."""
    graphdef, params = nnx.split(model)
    per_window = []
    for w in range(stream.shape[1] // WINDOW):
        logits = jax.jit(lambda params, x, kinds="C" * w + "P": sequence_logits(
            nnx.merge(graphdef, params), x, sleep=sleep, kinds=kinds))
        per_window.append(logits(params, jnp.asarray(stream[:, :(w + 1) * WINDOW]))[:, w * WINDOW:])
    return np.asarray(jnp.concatenate(per_window, axis=1))


@pytest.mark.parametrize("eviction, passes, carry_conv_tail",
                         [("hard", 1, False), ("hard", 3, False), ("sliding", 1, False), ("sliding", 3, False),
                          ("sliding", 3, True)])
def test_engine_logits_equal_the_training_path(eviction, passes, carry_conv_tail):
    """Two slots read two streams in odd-sized, interleaved pieces (slot 2's first piece holds a
    whole window, which goes straight to sleep), then generate greedily across a window boundary:
    every logit the engine gives equals sequence_logits within 1e-5, and each generated token is
    the argmax of the training path's logits."""
    model = tiny_model()
    sleep = SleepConfig(passes=passes, window=WINDOW, eviction=eviction, carry_conv_tail=carry_conv_tail)
    prompt, generated = 6, 3
    streams = np.asarray(jax.random.randint(jax.random.key(1), (2, prompt), 0, 13), np.int32)
    engine = Engine(model, sleep, slots=3)
    pieces = {0: [1, 2, 1, 2], 2: [5, 1]}                 # slot 1 stays empty
    read = {0: 0, 2: 0}
    seen = []                                              # (row, position, logits)
    for round_ in range(max(map(len, pieces.values()))):
        for row, slot in enumerate((0, 2)):
            if round_ < len(pieces[slot]):
                end = read[slot] + pieces[slot][round_]
                seen.append((row, end - 1, engine.prefill(slot, streams[row, read[slot]:end])))
                read[slot] = end
    assert read == {0: prompt, 2: prompt} and engine.position(1) == 0
    new = engine.generate([0, 2], generated)
    seen += [(row, prompt + generated - 1, engine.logits(slot)) for row, slot in enumerate((0, 2))]
    full = np.concatenate([streams, new, np.zeros((2, 12 - prompt - generated), np.int32)], axis=1)
    reference = training_logits(model, full, sleep)
    for row, position, logits in seen:
        np.testing.assert_allclose(logits, reference[row, position], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(new, reference[:, prompt - 1:prompt + generated - 1].argmax(-1))
    assert engine.stats["sleeps"] == 2 * 2  # window 0 while reading, window 1 while generating


def test_adaptive_windows_stop_where_the_training_path_stops():
    """sleep.halting="learned" (a halting head with random weights, so windows stop after different
    passes): four slots filling together stop each window after the passes the training path's
    windows stop after (the same histogram as `sequence_scores` and as the masked training scan),
    and the logits after the stream equal the training path's."""
    model = tiny_model(halting_head=True)
    weight = 2.0 * jax.random.normal(jax.random.key(7), model.halting_head.weight.shape)
    model.halting_head.weight[...] = weight.at[-1, 0].set(0.0)   # [-1, 0]: the bias
    sleep = SleepConfig(passes=4, window=WINDOW, eviction="sliding", halting="learned")
    streams = np.asarray(jax.random.randint(jax.random.key(2), (4, 3 * WINDOW), 0, 13), np.int32)
    engine = Engine(model, sleep, slots=4)
    logits = engine.prefill_many({row: streams[row] for row in range(4)})
    assert engine.stats["sleeps"] == 4 * 3 and engine.stats["sleep_calls"] == 3
    reference = training_logits(model, streams, sleep)
    for row in range(4):
        np.testing.assert_allclose(logits[row], reference[row, -1], atol=1e-5, rtol=0)
    scores = jax.jit(lambda x: sequence_scores(model, x, None, sleep=sleep, kinds="CCC"))(jnp.asarray(streams))
    passes = np.asarray(scores["passes"])
    assert len(set(passes.ravel().tolist())) > 1, passes
    histogram = {n: int(c) for n, c in enumerate(np.bincount(passes.ravel())) if c}
    assert engine.stats["passes_histogram"] == histogram
    assert engine.stats["sleep_passes"] == passes.sum()
    _, metrics = jax.jit(lambda x: sequence_loss(model, x, jnp.ones(x.shape), sleep=sleep, kinds="CCP"))(
        jnp.asarray(streams))
    np.testing.assert_allclose(metrics["passes"], passes[:, :2].mean(), rtol=1e-6)


@functools.partial(jax.jit, static_argnames=("model", "window", "eviction"))
def _decode_step(params, tokens, active, slots, *, model, window, eviction):
    return engine_lib.wake(model.merge(params), window, eviction, tokens, active, slots)


def read_token_by_token(engine, slot, tokens):
    """The reference reading: slot `slot` reads `tokens` one decode step each (as generation does),
    sleeping when its window fills. Returns the logits after the last one."""
    active = np.arange(engine.slots) == slot
    for token in tokens:
        engine._state = _decode_step(engine._params, np.full(engine.slots, token, np.int32), active, engine._state,
                                     **engine._wake_static())
        engine._positions[slot] += 1
        engine._sleep_full([slot] if engine._positions[slot] % WINDOW == 0 else [])
    return engine.logits(slot)


def assert_slots_close(got, want, slots):
    for slot in slots:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a[slot], np.float64), np.asarray(b[slot], np.float64),
                                                             atol=1e-5, rtol=0), got._state, want._state)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_parallel_prefill_equals_token_by_token_reading(eviction):
    """Slot 0 reads a stream in pieces that start at a window's start and inside it (offset > 0),
    one whole window straight to sleep; slot 1 reads a
    prompt shorter than a window; both then generate across a window boundary. Every logit, every
    generated token and the whole slot state (fast weights, conv tails, ring buffers, the kept
    keys/values) equal those of reading the same tokens one decode step each, within 1e-5. (Every
    piece is padded: the window, 4, is the shortest span.)"""
    model = tiny_model()
    sleep = SleepConfig(passes=3, window=WINDOW, eviction=eviction)
    stream = np.asarray(jax.random.randint(jax.random.key(2), (14,), 0, 13), np.int32)
    parallel, stepwise = Engine(model, sleep, slots=3), Engine(model, sleep, slots=3)
    read = 0
    for size in (1, 3, 5, 3, 2):     # offsets 0, 1, 0 (whole window, then 1), 1, 0
        piece = stream[read:read + size]
        read += size
        np.testing.assert_allclose(parallel.prefill(0, piece), read_token_by_token(stepwise, 0, piece),
                                   atol=1e-5, rtol=0, err_msg=f"after token {read}")
    assert parallel.stats["sleeps"] == stepwise.stats["sleeps"] == 3
    short = stream[:3]
    np.testing.assert_allclose(parallel.prefill(1, short), read_token_by_token(stepwise, 1, short), atol=1e-5, rtol=0)
    assert_slots_close(parallel, stepwise, [0, 1])
    np.testing.assert_array_equal(parallel.generate([0, 1], 4), stepwise.generate([0, 1], 4))
    assert_slots_close(parallel, stepwise, [0, 1])
    assert parallel.position(0) == 18 and parallel.stats["sleeps"] == 3 + 2


def test_slots_that_fill_together_sleep_in_one_call():
    """Three slots in different windows (so each row has its own positions and window index) fill
    their windows in the same prefill round (slot 2 with a whole window straight to sleep), then
    all three at the same generation step: each time they sleep in one batched call, and every
    logit and token equals each slot read on its own."""
    model = tiny_model()
    sleep = SleepConfig(passes=3, window=WINDOW, eviction="sliding")
    streams = np.asarray(jax.random.randint(jax.random.key(3), (3, 15), 0, 13), np.int32)
    together, alone = Engine(model, sleep, slots=3), Engine(model, sleep, slots=3)
    setup, after = {0: 2, 1: 6, 2: 8}, {0: 7, 1: 11, 2: 15}    # positions after each prefill
    for slot, end in setup.items():
        np.testing.assert_allclose(together.prefill(slot, streams[slot, :end]),
                                   alone.prefill(slot, streams[slot, :end]), atol=1e-5, rtol=0)
    assert (together.stats["sleeps"], together.stats["sleep_calls"]) == (3, 3)
    # round 1: slots 0 and 1 fill windows 0 and 1 by a span, slot 2 takes window 2 whole: one sleep
    # call; round 2: each reads the rest (3 tokens) of its next window
    got = together.prefill_many({slot: streams[slot, setup[slot]:end] for slot, end in after.items()})
    for slot, end in after.items():
        np.testing.assert_allclose(got[slot], alone.prefill(slot, streams[slot, setup[slot]:end]), atol=1e-5, rtol=0)
    assert (together.stats["sleeps"], together.stats["sleep_calls"]) == (6, 4)
    new = together.generate([0, 1, 2], 3)         # every slot fills its window at the first step
    assert (together.stats["sleeps"], together.stats["sleep_calls"]) == (9, 5)
    for slot in range(3):
        np.testing.assert_array_equal(new[slot], alone.generate([slot], 3)[0])
    assert alone.stats["sleeps"] == 9
    assert_slots_close(together, alone, [0, 1, 2])


def test_a_generation_step_copies_no_weight():
    """The compiled generation step (one token per slot) holds no copy, transpose or
    concatenation as large as a weight matrix: decoding reads each weight once, in place. (The
    tied LM head written as embedding.T copied the table every token; the GDN's fused q/k/v
    product copied its three weights side by side.)"""
    model = tiny_model(vocab_size=96, d_model=48, attn_head_dim=16, gdn_heads=2, gdn_head_dim=12, gdn_v_head_dim=12,
                       mlp_hidden=96)
    engine = Engine(model, SleepConfig(passes=1, window=WINDOW), slots=2)
    smallest = min(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))   # the matrices
                   if leaf.ndim >= 2 and min(leaf.shape[0], leaf.shape[-1]) >= 8)
    assert max(leaf[0].size for leaf in jax.tree.leaves(engine._state)) < smallest   # a state row is smaller
    static = dict(engine._wake_static(), temperature=0.0, top_k=0, top_p=1.0)
    hlo = engine_lib._generate_step.lower(engine._params, np.ones(2, bool), np.uint32(0), engine._state,
                                          **static).compile().as_text()
    moved = [(op, shape) for _, shape, op in re.findall(r"= (\w+)\[([\d,]*)\]\{[^}]*\} (copy|transpose|concatenate)\(", hlo)
             if math.prod(int(n) for n in shape.split(",") if n) >= smallest]
    assert not moved, f"weight-sized {moved} (smallest weight: {smallest} elements)"


def test_bad_input_is_a_clear_error_and_leaves_the_slots_intact(tmp_path):
    model = tiny_model()
    sleep = SleepConfig(passes=2, window=WINDOW)
    engine = Engine(model, sleep, slots=2)
    engine.prefill(0, [1, 2, 3, 4, 5])
    engine.prefill(1, [6, 7])
    before = jax.tree.map(np.asarray, engine._state)
    other = Engine(tiny_model(d_model=24), sleep, slots=2)
    other.snapshot(0, str(tmp_path / "other_model.safetensors"))
    Engine(model, SleepConfig(passes=3, window=WINDOW), slots=1).snapshot(0, str(tmp_path / "other_sleep.safetensors"))
    Engine(tiny_model(seed=5), sleep, slots=1).snapshot(0, str(tmp_path / "other_params.safetensors"))
    cases = [
        (lambda: engine.prefill(2, [1]), "slot=2 is out of range"),
        (lambda: engine.prefill(0, [1, 13]), r"tokens\[1\]=13 is outside the vocabulary"),
        (lambda: engine.prefill(0, [-1]), r"tokens\[0\]=-1"),
        (lambda: engine.generate([0], 0), "max_new_tokens must be an integer >= 1"),
        (lambda: engine.generate([0, 5], 1), "slot=5 is out of range"),
        (lambda: engine.restore(1, str(tmp_path / "other_model.safetensors")), "model.d_model is 24 there, 16 here"),
        (lambda: engine.restore(1, str(tmp_path / "other_sleep.safetensors")), "sleep.passes is 3 there, 2 here"),
        (lambda: engine.restore(1, str(tmp_path / "other_params.safetensors")), "other parameters"),
        (lambda: engine.restore(1, str(tmp_path / "missing.safetensors")), "does not exist"),
        (lambda: Sampling(top_p=0.0), "sampling.top_p"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    after = jax.tree.map(np.asarray, engine._state)
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert (engine.position(0), engine.position(1)) == (5, 2)


def test_snapshot_restore_is_bit_exact(tmp_path):
    """Sleep on a document once, snapshot; restored into another slot or another engine, the session
    continues exactly as the original (same bits, same sampled tokens)."""
    model = tiny_model(dtype="bfloat16")
    sleep = SleepConfig(passes=2, window=WINDOW, eviction="sliding")
    engine = Engine(model, sleep, slots=2)
    engine.prefill(0, np.arange(11) % 13)
    path = str(tmp_path / "session.safetensors")
    engine.snapshot(0, path)
    later = Engine(model, sleep, slots=2)
    later.restore(1, path)
    row = lambda e, slot: jax.tree.map(lambda x: np.asarray(x[slot]), e._state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8)),
                 row(engine, 0), row(later, 1))
    engine.restore(1, path)
    sampling = Sampling(temperature=1.0, top_k=5, top_p=0.9, seed=3)
    first = engine.generate([0, 1], 6, sampling)
    np.testing.assert_array_equal(first[0], first[1])          # the same session in two slots
    np.testing.assert_array_equal(later.generate(1, 6, sampling)[0], first[0])


def test_engine_reads_a_gsm_problem_where_training_cuts_its_windows():
    """A GSM-Infinite problem whose answer starts in window 3 of a task whose longest problems
    answer in window 7: read from its first token, the engine's logits at every scored position
    equal the training path's on the problem's batch (kinds read off the batch's mask, "CCCP"), and
    what follows the answer never changes a scored logit."""
    from sleep_jax import tasks
    from sleep_jax.windows import kinds_from_mask

    task = tasks.make(dict(tasks.default_config("gsm_infinite", "tiny"), window=128, target_tokens=(400, 900),
                           eval_examples=6, ops=(1, 2), eval_ops=(1, 2)))
    batch = next(iter(task.batches("eval", 0, 2)))
    kinds = kinds_from_mask(batch["loss_mask"], 128)
    assert kinds == "CCCP" and task.layout.kinds == "CCCCCCCP"
    model = HybridModel(ModelConfig(vocab_size=task.vocab.size, d_model=16, pattern="AGAG", attn_heads=2,
                                    attn_kv_heads=1, attn_head_dim=8, gdn_heads=1, gdn_v_heads=2, gdn_head_dim=8,
                                    gdn_v_head_dim=4, mlp_hidden=32, delta_rule_impl="recurrent", chunk_size=16),
                        rngs=nnx.Rngs(0))
    sleep = SleepConfig(passes=2, window=128, eviction="sliding")
    read = jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds=kinds))
    reference = np.asarray(read(batch["tokens"]))
    tokens, scored = batch["tokens"][0], np.flatnonzero(batch["loss_mask"][0])
    after = np.arange(batch["tokens"].shape[1]) > scored[-1] + 1          # the padding after the answer
    scrambled = np.where(after, (batch["tokens"] * 7 + 3) % task.vocab.size, batch["tokens"])
    np.testing.assert_array_equal(np.asarray(read(scrambled))[0, scored], reference[0, scored])
    engine = Engine(model, sleep, slots=1)
    logits = engine.prefill(0, tokens[:scored[0] + 1])
    assert engine.stats["sleeps"] == 3
    for position in scored:
        if position > scored[0]:
            logits = engine.prefill(0, tokens[position:position + 1])
        assert rel_rms(logits, reference[0, position]) <= 1e-5, f"position {position}"
