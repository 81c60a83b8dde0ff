import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.model import HybridModel, ModelConfig
from sleep_jax.numerics import rel_rms
from sleep_jax.sleep import (SleepConfig, consolidate, consolidate_run, cross_entropy, initial_past, predict,
                             scan_steps, sequence_logits, sequence_loss, sequence_predictions, sqrt_group,
                             window_runs)
from sleep_jax.windows import Span, kinds_from_mask
from tests.windowed import windowed_forward, zero_tails

WINDOW = 4


def tiny_model(seed=0, **overrides) -> HybridModel:
    fields = dict(vocab_size=13, d_model=16, pattern="AGAG", attn_heads=2, attn_kv_heads=1, attn_head_dim=8,
                  gdn_heads=1, gdn_v_heads=2, gdn_head_dim=8, gdn_v_head_dim=4, mlp_hidden=32,
                  delta_rule_impl="recurrent", chunk_size=16)
    return HybridModel(ModelConfig(**{**fields, **overrides}), rngs=nnx.Rngs(seed))


def tokens(batch, steps, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, steps), 0, 13, dtype=jnp.int32)


def loss_fn(graphdef, sleep, kinds):
    """A pure (params, tokens, mask) -> loss, as the trainer calls it."""
    def loss(params, x, mask):
        return sequence_loss(nnx.merge(graphdef, params), x, mask, sleep=sleep, kinds=kinds)[0]
    return loss


def scored_mask(kinds, batch=2):
    return jnp.asarray(np.repeat([[1.0 if k == "P" else 0.0 for k in kinds]], batch, 0).repeat(WINDOW, 1))


@pytest.mark.parametrize("carry_conv_tail", [False, True])
@pytest.mark.parametrize("eviction, impl", [("hard", "auto"), ("sliding", "recurrent")])
def test_one_pass_equals_ordinary_forward_with_windowed_mask(eviction, impl, carry_conv_tail):
    """N = 1 is a vanilla hybrid: one forward over the sequence with a block-diagonal (hard) or
    banded (sliding) causal mask, GDN state carried across windows, the conv tails too with
    sleep.carry_conv_tail (else each window's conv starts from zeros)."""
    model = tiny_model(delta_rule_impl=impl)
    x = tokens(2, 16)
    kinds = "CPCP"
    sleep = SleepConfig(passes=1, window=WINDOW, eviction=eviction, carry_conv_tail=carry_conv_tail)
    full = jax.jit(lambda x: windowed_forward(model, x, window=WINDOW, eviction=eviction,
                                              carry_conv_tail=carry_conv_tail))(x)
    windowed = jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds=kinds))(x)
    for w, kind in enumerate(kinds):
        span = slice(w * WINDOW, (w + 1) * WINDOW)
        if kind == "P":
            np.testing.assert_allclose(windowed[:, span], full[:, span], atol=1e-5)
        else:
            assert not np.any(windowed[:, span])


@pytest.mark.parametrize("carry_conv_tail", [False, True])
def test_looped_segment_one_pass_equals_ordinary_forward(carry_conv_tail):
    model = tiny_model(pattern="GAGAG", loop=(1, 4))
    x = tokens(2, 12, seed=1)
    sleep = SleepConfig(passes=1, window=WINDOW, carry_conv_tail=carry_conv_tail)
    full = jax.jit(lambda x: windowed_forward(model, x, window=WINDOW, eviction="hard",
                                              carry_conv_tail=carry_conv_tail))(x)
    windowed = jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds="CCP"))(x)
    np.testing.assert_allclose(windowed[:, 8:], full[:, 8:], atol=1e-5)


def test_more_passes_change_the_prediction_and_the_loss():
    model = tiny_model()
    x = tokens(2, 12)
    logits = {n: jax.jit(lambda x: sequence_logits(model, x, sleep=SleepConfig(passes=n, window=WINDOW),
                                                     kinds="CCP"))(x)
              for n in (1, 2)}
    assert float(jnp.max(jnp.abs(logits[1][:, 8:] - logits[2][:, 8:]))) > 1e-3


def test_gradient_flows_through_the_fast_weights_of_a_consolidation_window():
    """The prediction loss reaches a GDN layer's parameters as used while sleeping on the first
    window, through the recurrent state; cutting that state's gradient makes it exactly zero."""
    model = tiny_model(pattern="AG")
    graphdef, params = nnx.split(model)
    sleep = SleepConfig(passes=2, window=WINDOW)
    x = tokens(2, 8)
    mask = scored_mask("CP")

    def loss(sleeping_params, waking_params, cut):
        state, past = model.init_state(2), initial_past(model, 2, sleep)
        state, past, _ = consolidate(nnx.merge(graphdef, sleeping_params), x[:, :WINDOW], 0, state, past, sleep=sleep)
        if cut:
            state = jax.lax.stop_gradient(state)
        logits, _, _ = predict(nnx.merge(graphdef, waking_params), x[:, WINDOW:], 1, state, past, sleep=sleep)
        targets = jnp.concatenate([x[:, WINDOW + 1:], x[:, :1]], axis=1)  # the last one is not scored
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        targets_mask = mask[:, WINDOW:].at[:, -1].set(0.0)
        return jnp.sum(nll * targets_mask) / jnp.sum(targets_mask)

    # The composition is exactly what sequence_loss computes.
    np.testing.assert_allclose(jax.jit(loss, static_argnums=2)(params, params, False),
                               jax.jit(loss_fn(graphdef, sleep, "CP"))(params, x, mask), rtol=1e-6)
    grad = jax.jit(jax.grad(loss), static_argnums=2)
    gdn_weight = lambda g: g["blocks"][1]["mixer"]["w_q"][...]
    assert float(jnp.max(jnp.abs(gdn_weight(grad(params, params, False))))) > 1e-6
    assert not np.any(gdn_weight(grad(params, params, True)))


@pytest.fixture(scope="module")
def gdn_train_step():
    """(passes, remat) -> (compiled loss+grad step of a one-GDN-block model on kinds "CCP",
    CPU seconds its compile took, its arguments); each setting compiled once per module."""
    model = tiny_model(pattern="G")
    graphdef, params = nnx.split(model)
    kinds = "CCP"
    args = (params, tokens(2, 12), scored_mask(kinds))
    compiled = {}

    def get(passes, remat="none", fresh=False):
        if fresh or (passes, remat) not in compiled:
            step = jax.value_and_grad(loss_fn(graphdef, SleepConfig(passes=passes, window=WINDOW, remat=remat), kinds))
            lowered = jax.jit(step).lower(*args)
            start = time.process_time()
            executable = lowered.compile()
            compiled[passes, remat] = (executable, time.process_time() - start, args)
        return compiled[passes, remat]

    jax.jit(lambda a: jnp.sin(a) * 2).lower(1.0).compile()  # the first compile of a process pays set-up
    return get


def test_remat_options_give_the_plain_gradient(gdn_train_step):
    """Checkpointing per pass, per window, or sqrt-grouped changes memory, not the gradient."""
    # N = 8 over 2 windows: sqrt runs 4 checkpointed groups of 4 (window, pass) steps.
    grads = {}
    for remat in ("none", "pass", "window", "sqrt"):
        step, _, args = gdn_train_step(8, remat)
        grads[remat] = step(*args)[1]
    for remat in ("pass", "window", "sqrt"):
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[remat])):
            assert rel_rms(b, a) <= 1e-4, remat   # recomputation: float32 rounding only


def test_sqrt_remat_nests_a_scan_and_keeps_every_pass():
    seen = []

    def one_pass(carry, index):
        return carry * 1.5 + 1.0

    for passes in (1, 4, 5, 10, 12):
        out = scan_steps(one_pass, jnp.float32(0.0), jnp.arange(passes), sqrt_groups=True)
        expected = 0.0
        for _ in range(passes):
            expected = expected * 1.5 + 1.0
        seen.append((float(out), expected))
    for got, expected in seen:
        assert got == pytest.approx(expected)
    # Groups tile the steps: the divisor nearest sqrt(S); a prime S gives groups of one.
    assert [sqrt_group(s) for s in (1, 3, 4, 6, 10, 12, 24, 96, 7)] == [1, 1, 2, 2, 2, 3, 4, 8, 1]
    jaxpr = jax.make_jaxpr(lambda c: scan_steps(one_pass, c, jnp.arange(12), sqrt_groups=True))(jnp.float32(0.0))
    lengths = sorted(eqn.params["length"] for eqn in _all_eqns(jaxpr.jaxpr) if eqn.primitive.name == "scan")
    assert lengths == [3, 4]  # an outer scan of 4 checkpointed groups of 3 passes, no remainder


def _all_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in _subjaxprs(eqn):
            yield from _all_eqns(sub)


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def reference_logits(model, x, *, sleep, kinds):
    """DESIGN section 4 written as a plain Python loop over windows and passes (unrolled)."""
    prelude, segment, coda = model.config.layer_groups
    batch = x.shape[0]
    state, past = model.init_state(batch), model.init_kv(batch, sleep.window)
    sliding = sleep.eviction == "sliding"
    outputs = []
    for w, kind in enumerate(kinds):
        positions = w * sleep.window + jnp.arange(sleep.window)
        span = Span(positions, window=sleep.window, eviction=sleep.eviction,
                    past_positions=positions - sleep.window if sliding else None)
        kwargs = dict(past=past if sliding else None)
        hidden = model.embed(x[:, w * sleep.window:(w + 1) * sleep.window])
        state = state if sleep.carry_conv_tail else zero_tails(state)
        if kind == "P":
            hidden, state, kv = model.apply_blocks(hidden, span, state, range(len(model.blocks)), **kwargs)
            outputs.append(model.logits(hidden))
        else:
            hidden, state, kv = model.apply_blocks(hidden, span, state, prelude, **kwargs)
            entry_conv = {name: state[name]["conv"] for name in model.stateful_layers(segment)}
            for _ in range(sleep.passes):
                state = {**state, **{name: {"S": state[name]["S"], "conv": conv} for name, conv in entry_conv.items()}}
                hidden, state, pass_kv = model.apply_blocks(hidden, span, state, segment, **kwargs)
            hidden, state, coda_kv = model.apply_blocks(hidden, span, state, coda, **kwargs)
            kv = {**kv, **pass_kv, **coda_kv}
            outputs.append(jnp.zeros((batch, sleep.window, model.config.vocab_size)))
        past = kv
    return jnp.concatenate(outputs, axis=1)


@pytest.mark.parametrize("carry_conv_tail", [False, True])
def test_sleep_equals_the_plain_loop_over_windows_and_passes(carry_conv_tail):
    """Prelude once, looped segment N times (conv tail restored, S carried), coda once, window
    after window (the conv tails zeroed at each window's entry unless carried); under sliding
    eviction the next window sees the final pass's keys/values."""
    model = tiny_model(pattern="GAGAG", loop=(1, 4))
    x, kinds = tokens(2, 12, seed=2), "CCP"
    sleep = SleepConfig(passes=2, window=WINDOW, eviction="sliding", carry_conv_tail=carry_conv_tail)
    expected = jax.jit(lambda x: reference_logits(model, x, sleep=sleep, kinds=kinds))(x)
    for remat in ("pass", "window", "sqrt"):  # one flat (window, pass) scan; nested scans; grouped flat scan
        sleep = SleepConfig(passes=2, window=WINDOW, eviction="sliding", remat=remat, carry_conv_tail=carry_conv_tail)
        got = jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds=kinds))(x)
        np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=remat)


def test_sliding_window_at_least_t_is_full_causal_attention():
    model = tiny_model()
    x = tokens(2, 8, seed=4)
    full, _ = jax.jit(lambda x: model(x))(x)  # no window: full causal attention
    sliding = jax.jit(lambda x: sequence_logits(model, x, sleep=SleepConfig(window=8, eviction="sliding"),
                                                kinds="P"))(x)
    np.testing.assert_allclose(sliding, full, atol=1e-5)


def test_train_step_traces_one_scan_over_passes_and_compiles_as_fast_at_n8(gdn_train_step):
    """The jaxpr of a loss+grad step is the same size at N = 2 and N = 8 (the passes are a scan,
    not unrolled), and compiling it at N = 8 takes at most 1.5x as long as at N = 2."""
    model = tiny_model(pattern="G")
    graphdef, params = nnx.split(model)
    x, kinds = tokens(2, 12), "CCP"
    mask = scored_mask(kinds)
    jaxprs = {n: jax.make_jaxpr(jax.value_and_grad(loss_fn(graphdef, SleepConfig(passes=n, window=WINDOW), kinds)))(
        params, x, mask).jaxpr for n in (2, 8)}
    counts = {n: sum(1 for _ in _all_eqns(j)) for n, j in jaxprs.items()}
    assert counts[2] == counts[8]
    lengths = [eqn.params["length"] for eqn in _all_eqns(jaxprs[8]) if eqn.primitive.name == "scan"]
    assert lengths.count(2 * 8) == 2  # the (window, pass) steps of the 2 sleeping windows, forward and backward

    seconds = {n: gdn_train_step(n)[1] for n in (2, 8)}
    if seconds[8] > 1.5 * seconds[2]:  # CPU time on a shared machine: measure once more
        seconds = {n: gdn_train_step(n, fresh=True)[1] for n in (2, 8)}
    assert seconds[8] <= 1.5 * seconds[2], seconds


def test_truncated_backprop_still_reaches_the_first_window():
    """With truncate_passes on, the forward pass is unchanged and the gradient of the state after
    three sleeping windows still reaches the embeddings of tokens seen only in the first window
    (the earlier rule, a stop-gradient on the whole state, cut them off), through the fast weights."""
    model = tiny_model(pattern="AG")
    first_window = jnp.arange(1, 1 + WINDOW, dtype=jnp.int32)                 # tokens 1..4 only here
    later = jax.random.randint(jax.random.key(1), (2 * WINDOW,), 5, 13, dtype=jnp.int32)
    x = jnp.tile(jnp.concatenate([first_window, later])[None], (2, 1)).reshape(2, 3, WINDOW).swapaxes(0, 1)
    graphdef, params = nnx.split(model)

    def final_fast_weights(params, truncate):
        sleep = SleepConfig(passes=3, window=WINDOW, eviction="sliding", truncate_passes=truncate)
        model = nnx.merge(graphdef, params)
        past = initial_past(model, 2, sleep)
        state, _, _ = consolidate_run(model, x, 0, model.init_state(2), past, sleep=sleep)
        return jnp.sum(state["layer1"]["S"] ** 2)

    results = {k: jax.jit(jax.value_and_grad(final_fast_weights), static_argnums=1)(params, k) for k in (0, 1)}
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)       # the forward pass is unchanged
    embedding = {k: np.asarray(jax.tree.leaves(g["embedding"])[0]) for k, (_, g) in results.items()}
    assert np.all(np.abs(embedding[1][1:1 + WINDOW]).sum(axis=1) > 1e-6)     # the first window's tokens
    assert not np.allclose(embedding[1], embedding[0])                        # an approximation of the full gradient
    assert [SleepConfig(passes=3, truncate_passes=k).differentiated_passes for k in (0, 1, 3)] == [3, 1, 3]


def test_predictions_are_the_argmax_of_prediction_windows():
    model = tiny_model()
    graphdef, params = nnx.split(model)
    x, kinds = tokens(2, 12, seed=5), "CPP"
    sleep = SleepConfig(passes=2, window=WINDOW)
    mask = scored_mask(kinds)
    predictions = jax.jit(lambda p, x, m: sequence_predictions(nnx.merge(graphdef, p), x, m, sleep=sleep,
                                                               kinds=kinds))(params, x, mask)
    logits = jax.jit(lambda x: sequence_logits(model, x, sleep=sleep, kinds=kinds))(x)
    assert predictions.dtype == jnp.int32 and predictions.shape == (2, 12)
    np.testing.assert_array_equal(predictions[:, 4:], jnp.argmax(logits[:, 4:], -1))
    assert not np.any(predictions[:, :4])
    loss, metrics = jax.jit(lambda x, m: sequence_loss(model, x, m, sleep=sleep, kinds=kinds))(x, mask)
    right = (predictions[:, :-1] == x[:, 1:]) & (mask[:, :-1] > 0)
    assert float(metrics["scored"]) == 2 * 7  # the last position has no next token
    np.testing.assert_allclose(metrics["token_accuracy"], right.sum() / 14, rtol=1e-6)
    assert float(loss) == float(metrics["loss"]) > 0


def test_window_runs_and_kinds_from_mask():
    assert window_runs("CCPCP") == [("C", 0, 2), ("P", 2, 1), ("C", 3, 1), ("P", 4, 1)]
    mask = np.zeros((2, 12))
    mask[1, 9] = 1
    assert kinds_from_mask(mask, 4) == "CCP"


@pytest.mark.parametrize("fields, message", [
    (dict(passes=0), "sleep.passes >= 1"),
    (dict(window=0), "sleep.window >= 1"),
    (dict(eviction="lru"), "sleep.eviction"),
    (dict(remat="all"), "sleep.remat"),
    (dict(truncate_passes=-1), "sleep.truncate_passes"),
])
def test_sleep_config_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        SleepConfig(**fields)


@pytest.mark.parametrize("steps, kinds, mask_shape, message", [
    (10, "CP", (2, 10), "multiple of sleep.window"),
    (8, "CPP", (2, 8), "T / window"),   # more kinds than windows (fewer: the windows after are not read)
    (8, "CX", (2, 8), "letters"),
    (8, "CP", (2, 4), "loss_mask shape"),
])
def test_sequence_loss_rejects_bad_inputs(steps, kinds, mask_shape, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        sequence_loss(model, tokens(2, steps), jnp.zeros(mask_shape), sleep=SleepConfig(window=WINDOW), kinds=kinds)


def test_bfloat16_sliding_sleep_keeps_its_carry_dtypes():
    model = tiny_model(pattern="AG", dtype="bfloat16")
    x, kinds = tokens(2, 12, seed=6), "CCP"
    sleep = SleepConfig(passes=3, window=WINDOW, eviction="sliding")
    loss, metrics = jax.jit(lambda x, m: sequence_loss(model, x, m, sleep=sleep, kinds=kinds))(x, scored_mask(kinds))
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss)) and float(metrics["scored"]) == 2 * 3


def test_cross_entropy_and_its_gradient_are_those_of_log_softmax():
    logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 11))
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    weights = jax.random.uniform(jax.random.key(2), (2, 5))

    def autodiff(logits):
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(weights * jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0])

    value, grad = jax.value_and_grad(lambda x: jnp.sum(weights * cross_entropy(x, targets)))(logits)
    expected_value, expected_grad = jax.value_and_grad(autodiff)(logits)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
