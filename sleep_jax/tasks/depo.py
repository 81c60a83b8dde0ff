"""Depo: multi-hop retrieval on a directed cycle (Physics of Language Models 4.1, sleep-paper layout).

Each example is a directed cycle over n nodes, n drawn uniformly from [`min_nodes`, `nodes`] (the
paper: cycles of at most 75 nodes, shorter ones left-padded), each node a single-token name drawn
without replacement from `N0 .. N{name_count-1}`. Word-level tokens:

    context (consolidated): <pad> ... <pad> N7 -> N31 ; N2 -> N7 ; ...   edges in shuffled order,
                            4 tokens each, left-padded to ceil(4 * nodes / window) windows
    queries (predicted):    ? N2 +4 : N40 ? N9 +1 : N12 ...             `queries` of 5 tokens each,
                            "k hops after X: Y", right-padded to whole windows

Paper scale: nodes = 75, window L = 75: up to 300 edge tokens = 4 windows, then 10 queries in 50 tokens
(at most 60), padded to one more window of 75, so T = 375 and kinds = "CCCCP". (The issue's
T = 360 = 300 + 60 is not a whole number of 75-token windows; the last window is padded instead.)

Each query is one answer unit, scored at its ':' (whose logits predict Y). Training draws k
uniformly from `hops_train` (with `hops_curriculum` > 0, from its first values only at first:
`open_hops`). An eval example asks all its queries at one k, cycling through `eval_hops` over
the examples, so no query shares its window with one of another k (an untrained k's hop token
in the window would perturb the answers to trained ones). Buckets `k=<k>`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from sleep_jax.tasks import config as config_lib
from sleep_jax.tasks.task import Layout, Task, eval_value, example_rng
from sleep_jax.tasks.vocab import PAD, Vocab

EDGE_TOKENS = 4    # X -> Y ;
QUERY_TOKENS = 5   # ? X +k : Y
ANSWER_OFFSET = 3  # the ':' of a query, whose logits predict Y
DEFAULTS = {
    "nodes": 75,           # most nodes in a cycle (sets the context length)
    "min_nodes": 2,        # fewest nodes; n is drawn uniformly from [min_nodes, nodes] (the paper: "at most")
    "name_count": 100,     # node names N0..N{name_count-1}, each one token
    "window": 75,          # L
    "queries": 10,
    "hops_train": tuple(range(1, 17)),  # training k, drawn uniformly per query
    "hops_curriculum": 0,  # training examples over which hops_train opens up (0: all from the start)
    "eval_hops": (1, 2, 4, 8, 16),
    "eval_examples": 1000,  # a multiple of len(eval_hops): each eval example asks one k
}
TINY = {"nodes": 8, "min_nodes": 2, "name_count": 32, "window": 16, "queries": 3,
        "hops_train": tuple(range(1, 9)), "eval_hops": (1, 2, 4, 8), "eval_examples": 256}


@dataclasses.dataclass(frozen=True)
class DepoProblem:
    """A cycle and its queries, all as name indices.

    Attributes:
      cycle: int `[n]`, names in cycle order (cycle[i] -> cycle[(i + 1) % n]).
      edge_order: int `[n]`, the order the edges are listed in (edge i starts at cycle[i]).
      starts, hops, answers: int `[queries]`: query q asks the node `hops[q]` steps after `starts[q]`.
    """
    cycle: np.ndarray
    edge_order: np.ndarray
    starts: np.ndarray
    hops: np.ndarray
    answers: np.ndarray


class DepoTask(Task):
    """Depo k-hop retrieval; see the module docstring for the layout."""
    name = "depo"
    bucket = "k"

    def __init__(self, config: Mapping[str, Any]):
        self.config = config_lib.merge(self.name, config, DEFAULTS)
        self.nodes = config_lib.int_value(self.config, "nodes", low=2)
        self.min_nodes = config_lib.int_value(self.config, "min_nodes", low=2, high=self.nodes)
        self.name_count = config_lib.int_value(self.config, "name_count", low=self.nodes)
        window = config_lib.int_value(self.config, "window", low=1)
        self.answers = config_lib.int_value(self.config, "queries", low=1)
        self.hops_train = config_lib.int_tuple(self.config, "hops_train", low=1)
        self.hops_curriculum = config_lib.int_value(self.config, "hops_curriculum", low=0)
        self.eval_hops = config_lib.int_tuple(self.config, "eval_hops", low=1)
        self.eval_examples = config_lib.int_value(self.config, "eval_examples", low=1)
        config_lib.multiple_of("eval_examples", self.eval_examples, len(self.eval_hops),
                               "len(eval_hops): every bucket gets the same number of examples")
        max_hop = max(self.hops_train + self.eval_hops)
        hops = tuple(f"+{k}" for k in range(1, max_hop + 1))
        names = tuple(f"N{i}" for i in range(self.name_count))
        self.vocab = Vocab((PAD, "->", ";", "?", ":") + hops + names, word_level=True, separator="?")
        self._hop_base = self.vocab.id("+1") - 1      # id of "+k" is _hop_base + k
        self._name_base = self.vocab.id("N0")         # id of "Ni" is _name_base + i
        context_windows = -(-EDGE_TOKENS * self.nodes // window)
        query_windows = -(-QUERY_TOKENS * self.answers // window)
        self.context_len = context_windows * window
        self.layout = Layout(seq_len=(context_windows + query_windows) * window, window=window,
                             kinds="C" * context_windows + "P" * query_windows)

    def problem(self, split: str, seed: int, index: int) -> DepoProblem:
        rng = example_rng(seed, split, index)
        n = int(rng.integers(self.min_nodes, self.nodes + 1))
        cycle = rng.choice(self.name_count, n, replace=False)
        edge_order = rng.permutation(n)
        starts = rng.integers(0, n, self.answers)
        if split == "train":
            hops = np.asarray(self.hops_train[:self.open_hops(index)])
            hops = hops[rng.integers(len(hops), size=self.answers)]
        else:
            hops = np.full(self.answers, eval_value(self.eval_hops, index))
        return DepoProblem(cycle=cycle, edge_order=edge_order, starts=cycle[starts],
                           hops=hops, answers=cycle[(starts + hops) % n])

    def chance(self) -> float:
        """A query answered by a node of its cycle drawn uniformly: the mean of 1/n over the
        cycle sizes n in [min_nodes, nodes] (tiny: 0.245)."""
        return float(np.mean(1.0 / np.arange(self.min_nodes, self.nodes + 1)))

    def open_hops(self, index: int) -> int:
        """How many of `hops_train` (in the order given) training example `index` draws from.

        With `hops_curriculum` E > 0 the range opens in equal steps over the first E examples:
        `1 + index * len(hops_train) // E`, capped at all of them. A function of the global example
        index, so it does not depend on the batch size per process or on a resume.
        """
        if not self.hops_curriculum:
            return len(self.hops_train)
        return min(len(self.hops_train), 1 + index * len(self.hops_train) // self.hops_curriculum)

    def features(self, problem: DepoProblem) -> dict[str, np.ndarray]:
        ids, cycle, order = self.vocab.id, problem.cycle, problem.edge_order
        edges = np.empty((len(order), EDGE_TOKENS), np.int32)
        edges[:] = [0, ids("->"), 0, ids(";")]
        edges[:, 0] = self._name_base + cycle[order]
        edges[:, 2] = self._name_base + cycle[(order + 1) % len(cycle)]
        queries = np.empty((self.answers, QUERY_TOKENS), np.int32)
        queries[:] = [ids("?"), 0, 0, ids(":"), 0]
        queries[:, 1] = self._name_base + problem.starts
        queries[:, 2] = self._hop_base + problem.hops
        queries[:, 4] = self._name_base + problem.answers
        tokens = np.full(self.layout.seq_len, self.vocab.pad_id, np.int32)
        tokens[self.context_len - edges.size:self.context_len] = edges.reshape(-1)
        tokens[self.context_len:self.context_len + queries.size] = queries.reshape(-1)
        answer_id = np.full(self.layout.seq_len, -1, np.int32)
        answer_id[self.context_len + QUERY_TOKENS * np.arange(self.answers) + ANSWER_OFFSET] = np.arange(self.answers)
        return self.pack(tokens, answer_id, problem.hops)

    def record(self, problem: DepoProblem) -> dict[str, Any]:
        name = lambda i: f"N{i}"  # noqa: E731
        n = len(problem.cycle)
        edges = [[name(problem.cycle[i]), name(problem.cycle[(i + 1) % n])] for i in problem.edge_order.tolist()]
        queries = [{"start": name(s), "k": int(k), "answer": name(a)}
                   for s, k, a in zip(problem.starts.tolist(), problem.hops.tolist(), problem.answers.tolist())]
        return {"n": n, "edges": edges, "queries": queries}
