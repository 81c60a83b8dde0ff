"""Adaptive sleep (`sleep.halting`): the rules' invariants on a tiny model.

- "converged" with tolerance 0 is "fixed"; otherwise a row stops after the first pass that changes its
  fast weights by less than the tolerance;
- a row that stops after k passes ("learned", rows stopping at different k) leaves exactly what
  fixed N = k leaves, in the masked training scan and in the really-stopping while loop alike;
- the ponder term's gradient reaches the halting head (and matches finite differences);
- bad keys fail with one line naming the key.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax import halting
from sleep_jax.sleep import SleepConfig, consolidate, initial_past, sequence_logits, sequence_loss, sequence_scores
from tests.test_sleep import WINDOW, scored_mask, tiny_model, tokens

KINDS = "CCP"
BATCH = 4


def learned_model(seed=0):
    """A tiny model whose halting head reads its features with random weights, so rows stop at
    different passes."""
    model = tiny_model(seed, halting_head=True)
    head = model.halting_head
    head.weight[...] = (2.0 * jax.random.normal(jax.random.key(seed + 1), head.weight.shape)).at[-1, 0].set(0.0)
    return model


@pytest.mark.parametrize("fields, message", [
    (dict(halting="sometimes"), "sleep.halting='sometimes' must be one of"),
    (dict(halting="learned", halt_threshold=0.0), "sleep.halt_threshold must lie in (0, 1)"),
    (dict(halting="learned", halt_threshold=1.0), "sleep.halt_threshold must lie in (0, 1)"),
    (dict(halting="converged", tolerance=-1e-3), "sleep.tolerance >= 0 required"),
    (dict(halting="learned", ponder_cost=-0.1), "sleep.ponder_cost >= 0 required"),
    (dict(halting="converged", passes=3, truncate_passes=1), "sleep.truncate_passes=1 needs sleep.halting='fixed'"),
])
def test_bad_halting_keys_fail_naming_the_key(fields, message):
    with pytest.raises(ValueError, match=f"^{message}".replace("(", r"\(").replace(")", r"\)")):
        SleepConfig(window=WINDOW, **fields)


def test_rules_that_read_fast_weights_need_a_stateful_looped_block():
    with pytest.raises(ValueError, match=r"^model.halting_head=True reads the fast weights .* no stateful block"):
        tiny_model(pattern="AA", halting_head=True)
    attention_only = tiny_model(pattern="AA").config
    with pytest.raises(ValueError, match=r"^sleep.halting='converged' reads the fast weights .* no stateful"):
        halting.check(SleepConfig(window=WINDOW, halting="converged"), attention_only)
    with pytest.raises(ValueError, match=r"^sleep.halting='learned' needs model.halting_head=True"):
        halting.check(SleepConfig(window=WINDOW, halting="learned"), tiny_model().config)


def test_fixed_is_the_n_pass_program_whatever_the_adaptive_keys():
    """halting="fixed" traces the program adaptive sleep leaves alone (no while loop, no halting
    record in the scan): the adaptive keys do not enter it. (Bit-identity with the code before
    adaptive sleep existed was checked when it was written: loss, gradients and logits of five
    remat / eviction / truncation settings, 290 arrays, equal bit for bit.)"""
    model = tiny_model()
    x, mask = tokens(BATCH, 3 * WINDOW), scored_mask(KINDS, BATCH)

    def program(fn, **keys):
        sleep = SleepConfig(passes=3, window=WINDOW, **keys)
        return str(jax.make_jaxpr(lambda x: fn(model, x, mask, sleep=sleep, kinds=KINDS))(x))

    assert program(sequence_loss) == program(sequence_loss, tolerance=0.5, halt_threshold=0.9, ponder_cost=1.0)
    assert "while" not in program(sequence_scores) and "while" in program(sequence_scores, halting="converged")


def _consolidated(model, sleep, x, stop_early):
    state = model.init_state(BATCH)
    past = initial_past(model, BATCH, sleep)
    fn = jax.jit(lambda x: consolidate(model, x, 0, state, past, sleep=sleep, stop_early=stop_early))
    return fn(x)


def test_a_row_that_stops_after_k_passes_leaves_what_fixed_k_leaves():
    """Under "learned" each row leaves its stopping pass's fast weights, conv tails (they cross
    with carry_conv_tail) and keys/values (sliding), whether the scan masks the later passes
    (training) or the while loop stops (eval, engine)."""
    model = learned_model()
    x = tokens(BATCH, WINDOW, seed=3)
    common = dict(window=WINDOW, eviction="sliding", carry_conv_tail=True)
    learned = SleepConfig(passes=4, halting="learned", halt_threshold=0.5, **common)
    masked = _consolidated(model, learned, x, stop_early=False)
    stopping = _consolidated(model, learned, x, stop_early=True)
    passes = np.asarray(masked[2].passes)
    np.testing.assert_array_equal(np.asarray(stopping[2].passes), passes)
    assert len(set(passes.tolist())) > 1, f"rows should stop at different passes, got {passes}"
    for k in sorted(set(passes.tolist())):
        rows = passes == k
        fixed = _consolidated(model, SleepConfig(passes=k, **common), x, stop_early=False)
        assert np.all(np.asarray(fixed[2].passes)[rows] == k)
        for result in (masked, stopping):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[rows], np.asarray(b)[rows],
                                                                 rtol=1e-6, atol=1e-6),
                         result[:2], fixed[:2])


def _loss_and_grad(model, sleep, x, mask):
    graphdef, params = nnx.split(model)

    def loss(params):
        return sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds=KINDS)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def test_converged_with_tolerance_zero_is_fixed():
    model = tiny_model()
    x, mask = tokens(BATCH, 3 * WINDOW), scored_mask(KINDS, BATCH)
    fixed = SleepConfig(passes=3, window=WINDOW)
    converged = SleepConfig(passes=3, window=WINDOW, halting="converged", tolerance=0.0)
    (loss_f, metrics_f), grad_f = _loss_and_grad(model, fixed, x, mask)
    (loss_c, metrics_c), grad_c = _loss_and_grad(model, converged, x, mask)
    np.testing.assert_allclose(loss_c, loss_f, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grad_c, grad_f)
    assert "passes" not in metrics_f and metrics_c["passes"] == metrics_c["ponder"] == 3
    assert metrics_c["passes/3"] == 1 and metrics_c["passes/1"] == 0
    logits = [jax.jit(lambda x, s=s: sequence_logits(model, x, sleep=s, kinds=KINDS))(x) for s in (fixed, converged)]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-6, atol=1e-6)


def test_converged_stops_at_the_first_pass_whose_change_is_below_the_tolerance():
    """The passes "converged" runs per row, against relative changes of S computed here from
    fixed N = 1, 2, 3 (a window entered with S = 0 changes infinitely in its first pass)."""
    model = tiny_model()
    x = tokens(BATCH, WINDOW, seed=5)
    states = [_consolidated(model, SleepConfig(passes=n, window=WINDOW), x, stop_early=False)[0]
              for n in (1, 2, 3)]

    def change(before, after):   # max over layers of ||dS|| / ||S_before|| per row
        ratios = []
        for name in after:
            old, new = (np.asarray(s[name]["S"], np.float64).reshape(BATCH, -1) for s in (before, after))
            with np.errstate(divide="ignore"):
                ratios.append(np.linalg.norm(new - old, axis=1) / np.linalg.norm(old, axis=1))
        return np.max(ratios, axis=0)

    changes = np.stack([change(states[0], states[1]), change(states[1], states[2])])   # passes 2, 3
    tolerance = float(np.median(changes[0]))
    expected = np.where(changes[0] < tolerance, 2, 3)
    assert len(set(expected.tolist())) > 1
    sleep = SleepConfig(passes=3, window=WINDOW, halting="converged", tolerance=tolerance)
    for stop_early in (False, True):
        np.testing.assert_array_equal(_consolidated(model, sleep, x, stop_early)[2].passes, expected)


def test_the_ponder_term_reaches_the_halting_head():
    """d(mean expected passes) / d(head bias) (`weight[-1, 0]`) is the finite difference of the
    same, and the ponder cost adds exactly ponder_cost times it to the loss's gradient."""
    model = learned_model()
    x, mask = tokens(BATCH, 3 * WINDOW), scored_mask(KINDS, BATCH)
    graphdef, params = nnx.split(model)

    def ponder_and_loss(params, cost):
        sleep = SleepConfig(passes=3, window=WINDOW, halting="learned", ponder_cost=cost)
        loss, metrics = sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds=KINDS)
        return metrics["ponder"], loss

    ponder = jax.jit(lambda p: ponder_and_loss(p, 0.5)[0])
    gradient = jax.jit(jax.grad(ponder))(params)["halting_head"]["weight"][...][-1, 0]
    assert gradient < 0   # a larger stop probability means fewer passes

    def with_bias(delta):
        shifted = jax.tree.map(lambda a: a, params)
        shifted["halting_head"]["weight"][...] = params["halting_head"]["weight"][...].at[-1, 0].add(delta)
        return float(ponder(shifted))

    eps = 1e-2
    np.testing.assert_allclose(gradient, (with_bias(eps) - with_bias(-eps)) / (2 * eps), rtol=2e-2)
    loss_grad = jax.jit(jax.grad(lambda p, c: ponder_and_loss(p, c)[1]), static_argnums=1)
    head = [loss_grad(params, c)["halting_head"]["weight"][...][-1, 0] for c in (0.0, 0.5)]
    np.testing.assert_allclose(head[1] - head[0], 0.5 * gradient, rtol=1e-3)


def test_eval_records_the_passes_training_logs():
    model = learned_model()
    x, mask = tokens(BATCH, 3 * WINDOW), scored_mask(KINDS, BATCH)
    sleep = SleepConfig(passes=3, window=WINDOW, halting="learned")
    (_, metrics), _ = _loss_and_grad(model, sleep, x, mask)
    scores = jax.jit(lambda x, m: sequence_scores(model, x, m, sleep=sleep, kinds=KINDS))(x, mask)
    passes = np.asarray(scores["passes"])
    assert passes.shape == (BATCH, 2) and passes.min() >= 1 and passes.max() <= 3
    np.testing.assert_allclose(metrics["passes"], passes.mean(), rtol=1e-6)
    for n in (1, 2, 3):
        np.testing.assert_allclose(metrics[f"passes/{n}"], np.mean(passes == n), rtol=1e-6)
    assert 1 <= metrics["ponder"] <= 3
