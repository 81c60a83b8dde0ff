r"""Stream a prompt through a trained run's model with sleep, and print what it generates.

    python -m sleep_jax.generate --workdir=runs/rule110_tiny --prompt='0110...|' [--passes=N]
        [--max_new_tokens=N] [--temperature=0 --top_k=0 --top_p=1 --seed=0]
    python -m sleep_jax.generate --workdir=runs/rule110_tiny --eval_examples=64

The prompt (``--prompt`` or ``--prompt_file``) is encoded with the task's vocabulary and read by one
engine slot; a progress line on stderr says each time its window fills and it sleeps. A prompt
that is not in the format of the run's task (`Task.check_prompt`: e.g. a paper-size Rule 110
prompt to a tiny run) gets a warning line on stderr and is read anyway. Generated text goes to
stdout token by token: the task's answer length (`Task.answer_tokens`; `--max_new_tokens` sets
another), stopping early at the task's end-of-answer token.

``--eval_examples=K`` answers the first K examples of the run's eval split instead: for each run
of scored positions (an answer), the engine reads the example up to the answer, generates the
answer greedily, then goes back (a session snapshot) and reads the true answer before the next
one. The generated answers are scored by the task's evaluator; the last stdout line is its
result as JSON.
"""
import dataclasses
import json
import os
import sys
import tempfile

from absl import app, flags



def load_run(workdir: str, passes: int | None = None):
    """(model, SleepConfig, task, config) of the newest readable checkpoint of a `sleep_jax.main`
    run in `workdir`, built from the run's own config.json."""
    from flax import nnx

    from sleep_jax.train import record as record_lib
    from sleep_jax.train.loop import restore_newest, setup_stages

    config = record_lib.load_run_config(workdir)
    if config is None:
        raise ValueError(f"--workdir={workdir}: no config.json (not a sleep_jax.main run directory)")
    experiments = setup_stages(config)
    experiment = experiments[-1]
    _, state, _ = restore_newest(experiments, workdir)
    sleep = experiment.sleep if passes is None else dataclasses.replace(experiment.sleep, passes=passes)
    return nnx.merge(experiment.graphdef, state["params"]), sleep, experiment.task, experiment.config


def answer_spans(answer_id):
    """[(first, last)] of each run of consecutive scored positions (answer_id >= 0)."""
    spans = []
    for position in [int(i) for i in (answer_id >= 0).nonzero()[0]]:
        if spans and spans[-1][1] == position - 1:
            spans[-1] = (spans[-1][0], position)
        else:
            spans.append((position, position))
    return spans


def answer_examples(engine, task, count: int, seed: int) -> dict:
    """Generate the answers of eval examples 0..count-1 with the engine (slot 0) and score them."""
    import numpy as np

    evaluator = task.evaluator()
    with tempfile.TemporaryDirectory() as scratch:
        session = os.path.join(scratch, "before_answer.safetensors")
        for index in range(count):
            example = task.example("eval", seed, index)
            tokens = example["tokens"]
            predictions = np.zeros_like(tokens)
            engine.reset(0)
            read = 0
            for first, last in answer_spans(example["answer_id"]):
                engine.prefill(0, tokens[read:first + 1])      # logits at `first` predict the answer
                engine.snapshot(0, session)
                predictions[first:last + 1] = engine.generate(0, last - first + 1)[0]
                engine.restore(0, session)                     # back to before the answer, then the true one
                read = first + 1
                if last + 1 > read:
                    engine.prefill(0, tokens[read:last + 1])
                    read = last + 1
            evaluator.add({k: v[None] for k, v in example.items()}, predictions[None])
            answer = task.vocab.decode(predictions[example["answer_id"] >= 0])
            truth = task.vocab.decode(tokens[1:][example["answer_id"][:-1] >= 0])
            print(f"example {index}: generated {answer!r} expected {truth!r}", flush=True)
    return evaluator.result()


def define_flags() -> None:
    """The command's flags (defined only when run as a command, so importing this module next to
    a benchmark with a `--passes` flag does not clash)."""
    flags.DEFINE_string("workdir", None, "A run directory of `sleep_jax.main` (config.json, checkpoints/).")
    flags.DEFINE_string("prompt", None, "Prompt text in the task's vocabulary.")
    flags.DEFINE_string("prompt_file", None, "A file holding the prompt text.")
    flags.DEFINE_integer("passes", None, "Sleep passes N (default: the run's sleep.passes).")
    flags.DEFINE_integer("max_new_tokens", None, "Most tokens to generate (default: the task's answer "
                         "length, `Task.answer_tokens`); it stops early at an end-of-answer token.")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = all).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("eval_examples", 0, "Answer this many eval examples and score them.")
    flags.mark_flag_as_required("workdir")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from sleep_jax.infer import Engine, Sampling

    if FLAGS.max_new_tokens is not None and FLAGS.max_new_tokens < 1:
        raise app.UsageError(f"--max_new_tokens must be >= 1, got {FLAGS.max_new_tokens}")
    from sleep_jax.train.errors import RunStopped
    try:
        model, sleep, task, config = load_run(FLAGS.workdir, FLAGS.passes)
    except (ValueError, RunStopped) as error:  # no run, no readable checkpoint, a bad config
        raise app.UsageError(str(error)) from None

    def progress(slot, window, seconds):
        print(f"[window {window} full: slept {sleep.passes} passes in {1000 * seconds:.1f} ms, "
              f"{'KV evicted' if sleep.eviction == 'hard' else 'KV slid'}]", file=sys.stderr, flush=True)

    engine = Engine(model, sleep, slots=1, on_sleep=progress)
    if FLAGS.eval_examples:
        result = answer_examples(engine, task, FLAGS.eval_examples, seed=config.train.eval_seed)
        summary = {k: result[k] for k in ("accuracy", "by_difficulty") if k in result}
        print(json.dumps({"task": task.name, "passes": sleep.passes, "examples": FLAGS.eval_examples, **summary}))
        return
    if (FLAGS.prompt is None) == (FLAGS.prompt_file is None):
        raise app.UsageError("give exactly one of --prompt and --prompt_file")
    text = FLAGS.prompt
    if text is None:
        with open(FLAGS.prompt_file) as f:
            text = f.read().rstrip("\n")
    prompt = task.vocab.encode(text)
    mismatch = task.check_prompt(prompt)
    if mismatch:
        source = "--prompt" if FLAGS.prompt is not None else f"--prompt_file={FLAGS.prompt_file}"
        print(f"warning: {source}: {mismatch}; `python -m sleep_jax.tasks.show --config=<this run's "
              f"config, e.g. configs/{task.name}.py:tiny>` prints its examples", file=sys.stderr, flush=True)
    print(f"[read {len(prompt)} tokens, window {sleep.window}, {sleep.passes} passes per sleep]", file=sys.stderr,
          flush=True)
    engine.prefill(0, prompt)
    sampling = Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.seed)
    for _ in range(FLAGS.max_new_tokens or task.answer_tokens()):
        token = int(engine.generate(0, 1, sampling)[0, 0])
        if token == task.vocab.eos_id:
            break
        print(task.vocab.decode([token]), end="", flush=True)
    print()


if __name__ == "__main__":
    define_flags()
    app.run(main)
