"""The published GSM-Infinite problems: `read_published` reads the hub's parquet files or the
generator's jsonl into `PublishedProblem`s (`task.data=PATH`; see `gsm_infinite.task`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

MAX_PUBLISHED_OPS = 50   # the published sets go to 30 ops (medium, hard) and 50 (symbolic)


@dataclasses.dataclass(frozen=True)
class PublishedProblem:
    """One problem of a published GSM-Infinite file: its question then its context (`text`), op
    count, answer."""
    ops: int
    text: str
    answer: int
    source: str   # "<file>:<row>"


_ANSWER = re.compile(r"answer\s*:\s*(-?\d+)", re.IGNORECASE)
PUBLISHED_FIELDS = ("problem", "question", "solution", "op")


def read_published(path: str) -> list[PublishedProblem]:
    """Every problem in the published GSM-Infinite files under `path` (a file or a directory,
    searched recursively): `*.parquet` as on the Hugging Face hub (`InfiniAILab/gsm_infinite_*`,
    one `ops_<n>` split per file) or `*.jsonl` as its generator writes them, rows with
    `problem`, `question`, `solution` (ending in "Answer: <n>") and `op`. Files are read in name
    order. ValueError naming the file and row for a missing field or an answer it cannot read."""
    if os.path.isdir(path):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                       for name in names if name.endswith((".parquet", ".jsonl")))
    else:
        files = [path]
    if not files or not os.path.exists(files[0]):
        raise ValueError(f"task.data={path!r}: no *.parquet or *.jsonl file there")
    problems = []
    for file in files:
        if file.endswith(".parquet"):
            import pyarrow.parquet as pq
            rows = pq.read_table(file).to_pylist()
        else:
            with open(file) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        for index, row in enumerate(rows):
            where = f"{file}:{index}"
            missing = [field for field in PUBLISHED_FIELDS if field not in row]
            if missing:
                raise ValueError(f"task.data={path!r}: row {where} has no field {missing[0]!r}")
            answers = _ANSWER.findall(str(row["solution"]))
            if not answers:
                raise ValueError(f"task.data={path!r}: row {where}: no 'Answer: <integer>' in its solution")
            # The question first, then the context: as the generator lays a problem out (and as the
            # paper asks: the model knows the query before reading the long context).
            text = str(row["question"]).strip() + "\n" + str(row["problem"]).strip()
            problems.append(PublishedProblem(ops=int(row["op"]), text=text,
                                             answer=int(answers[-1]), source=where))
    return problems
