"""GSM-Infinite style word problems (the paper's third task), one file per job:

- `generator.py`: our problem generator after GSM-Infinite's "realistic" forward generator:
  templates, the structure graph, statements with an exact op count, distractors and padding to
  a target length (`generate`, `GsmProblem`, `TEMPLATES`, `MAX_VALUE`, `MAX_OPS`, `WORDS`).
- `published.py`: the reader of the published GSM-Infinite datasets, the hub's parquet files or
  the generator's jsonl (`read_published`, `PublishedProblem`).
- `task.py`: `GsmInfiniteTask`, its config (`DEFAULTS`, `TINY`) and the sequence layout: the
  question first, left-padded so that the answer ends the last window (`ANSWER_PREFIX`).

Re-exported here: the names the registry, the benchmarks and the tests use.
"""
from sleep_jax.tasks.gsm_infinite.generator import MAX_OPS, MAX_VALUE, TEMPLATES, WORDS, generate
from sleep_jax.tasks.gsm_infinite.task import ANSWER_PREFIX, DEFAULTS, TINY, GsmInfiniteTask

__all__ = ["ANSWER_PREFIX", "DEFAULTS", "MAX_OPS", "MAX_VALUE", "TEMPLATES", "TINY", "WORDS",
           "GsmInfiniteTask", "generate"]
