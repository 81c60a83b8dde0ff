r"""Stream a prompt through a trained run's model with sleep, and print what it generates.

    python -m sleep_jax.generate --workdir=runs/rule110_tiny --prompt='0110...|' [--passes=N]
        [--max_new_tokens=N] [--temperature=0 --top_k=0 --top_p=1 --seed=0]
    python -m sleep_jax.generate --workdir=runs/rule110_tiny --eval_examples=64

``--workdir`` is any model directory (see ``sleep_jax.convert``): a run of ``sleep_jax.main``
(fine-tuned or not) answers with its task's vocabulary and sleep setting; a convert directory or
hub checkpoint, which has no task, with its hub tokenizer, N = 1 (or ``--passes``) and windows of
``PRETRAINED_WINDOW`` tokens (sliding eviction); ``--eval_examples`` needs a run.

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

A bad flag (sampling values, ``--passes``, ``--eval_examples``) stops with one line as the flags
are parsed, a bad prompt (empty, a symbol outside the task's vocabulary) before the engine is
built (``sleep_jax.cli``).
"""
import dataclasses
import json
import os
import sys
import tempfile

from absl import app, flags

from sleep_jax import cli


# A hub checkpoint or convert directory has no sleep setting of its own: N = 1 (or --passes),
# windows of PRETRAINED_WINDOW tokens with sliding eviction, so a prompt and answer of up to that
# many tokens read exactly as the pretrained model reads them.
PRETRAINED_WINDOW = 2048
PRETRAINED_NEW_TOKENS = 32     # generated from a hub or convert directory without --max_new_tokens


class PromptVocab:
    """What `main` needs of a task to read a prompt, for a directory without one: the hub
    tokenizer as `vocab` (its `eos_id` ends the answer)."""

    name = None

    def __init__(self, vocab):
        self.vocab = vocab

    def answer_tokens(self) -> int:
        """A pretrained model has no answer length: PRETRAINED_NEW_TOKENS unless --max_new_tokens."""
        return PRETRAINED_NEW_TOKENS

    def check_prompt(self, prompt) -> None:
        """Any text is a prompt to a pretrained model."""
        return None


def load_run(workdir: str, passes: int | None = None, *, need_task: bool = False):
    """(model, SleepConfig, task, config) of any model directory (`sleep_jax.convert`'s
    docstring): a `sleep_jax.main` run (fine-tuned or not) is its newest readable checkpoint
    with its own config.json, task and sleep; a convert directory or hub checkpoint is its model
    with N = `passes` or 1, L = PRETRAINED_WINDOW sliding, a `PromptVocab` of its hub tokenizer as
    the task and config None. ValueError naming the missing file (a task with `need_task`, a
    tokenizer.json otherwise) when the directory has none."""
    from sleep_jax import convert
    from sleep_jax.sleep import SleepConfig
    from sleep_jax.tasks.vocab import TokenizerVocab
    from sleep_jax.train import record as record_lib
    from sleep_jax.train.loop import restore_run

    kind = convert.model_dir_kind(workdir, "--workdir")
    if kind == "run":
        config = record_lib.load_run_config(workdir)
        model, experiments = restore_run(workdir, config)
        experiment = experiments[-1]
        sleep = experiment.sleep if passes is None else dataclasses.replace(experiment.sleep, passes=passes)
        return model, sleep, experiment.task, experiment.config
    if need_task:
        raise ValueError(f"--workdir={workdir!r}: a {kind} directory has no task (no {convert.RUN_CONFIG} of a "
                         "sleep_jax.main run); --eval_examples needs one")
    hub = convert.hub_files_dir(workdir, "--workdir")
    if not os.path.exists(os.path.join(hub, "tokenizer.json")):
        raise ValueError(f"--workdir={workdir!r}: no {os.path.join(hub, 'tokenizer.json')} to read the prompt with "
                         "(a convert or hub directory has no task vocabulary)")
    sleep = SleepConfig(passes=passes or 1, window=PRETRAINED_WINDOW, eviction="sliding")
    return convert.load_model(workdir, "--workdir"), sleep, PromptVocab(TokenizerVocab(hub)), None


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


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (defined only when run as a command, so importing this module next to
    a benchmark with a `--passes` flag does not clash), each checked as it is parsed."""
    def define(kind, name, default, help_text, **bounds):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values, **bounds)

    define("string", "workdir", None, "A run directory of `sleep_jax.main` (config.json, checkpoints/).")
    define("string", "prompt", None, "Prompt text in the task's vocabulary.")
    define("string", "prompt_file", None, "A file holding the prompt text.")
    define("integer", "passes", None, "Sleep passes N (default: the run's sleep.passes).")
    define("integer", "max_new_tokens", None, "Most tokens to generate (default: the task's answer "
           "length, `Task.answer_tokens`); it stops early at an end-of-answer token.", lower_bound=1)
    define("float", "temperature", 0.0, "0 = greedy.")
    define("integer", "top_k", 0, "Keep the k most likely tokens (0 = all).")
    define("float", "top_p", 1.0, "Nucleus sampling mass (1 = all).")
    define("integer", "seed", 0, "Sampling seed.")
    define("integer", "eval_examples", 0, "Answer this many eval examples and score them.", lower_bound=0)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)
    from sleep_jax.infer.sampling import Sampling
    from sleep_jax.sleep import SleepConfig

    cli.check_flags_as_fields(SleepConfig, "passes", flag_values=flag_values)
    cli.check_flags_as_fields(Sampling, "temperature", "top_k", "top_p", "seed", flag_values=flag_values)


def read_prompt(prompt: str | None, prompt_file: str | None) -> tuple[str, str]:
    """(text, the flag it came from) of exactly one of ``--prompt`` / ``--prompt_file``;
    ``ConfigError`` naming the flag or file otherwise."""
    from sleep_jax.train.errors import ConfigError

    if (prompt is None) == (prompt_file is None):
        raise ConfigError("give exactly one of --prompt and --prompt_file")
    if prompt is not None:
        return prompt, "--prompt"
    try:
        with open(prompt_file) as f:
            return f.read().rstrip("\n"), f"--prompt_file={prompt_file}"
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--prompt_file={prompt_file}: {error}") from None


def encode_prompt(vocab, text: str, source: str) -> list[int]:
    """Token ids of a prompt in the task's vocabulary; ``ConfigError`` naming ``source`` (the
    flag or file) for an empty prompt or a symbol that is not a token."""
    from sleep_jax.train.errors import ConfigError

    try:
        prompt = vocab.encode(text)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    if not prompt:
        raise ConfigError(f"{source}: empty prompt; the engine needs at least one token to read")
    return prompt


def main(argv):
    del argv  # cli.run: none left
    FLAGS = flags.FLAGS
    from sleep_jax.infer import Engine, Sampling

    from sleep_jax.train.errors import RunStopped
    if not FLAGS.eval_examples:
        text, source = read_prompt(FLAGS.prompt, FLAGS.prompt_file)
    try:
        model, sleep, task, config = load_run(FLAGS.workdir, FLAGS.passes, need_task=FLAGS.eval_examples > 0)
    except (ValueError, RunStopped) as error:  # no run, no readable checkpoint, a bad config
        raise app.UsageError(str(error)) from None

    def progress(slot, window, seconds):
        print(f"[window {window} full: slept {sleep.passes} passes in {1000 * seconds:.1f} ms, "
              f"{'KV evicted' if sleep.eviction == 'hard' else 'KV slid'}]", file=sys.stderr, flush=True)

    if not FLAGS.eval_examples:
        prompt = encode_prompt(task.vocab, text, source)
    engine = Engine(model, sleep, slots=1, on_sleep=progress)
    if FLAGS.eval_examples:
        result = answer_examples(engine, task, FLAGS.eval_examples, seed=config.train.eval_seed)
        summary = {k: result[k] for k in ("accuracy", "by_difficulty") if k in result}
        print(json.dumps({"task": task.name, "passes": sleep.passes, "examples": FLAGS.eval_examples, **summary}))
        return
    mismatch = task.check_prompt(prompt)
    if mismatch:
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
    cli.run(main, define_flags)
