"""Depo: answers checked by walking the cycle read back from the listed edges; layout; evaluator."""
import numpy as np
import pytest

from sleep_jax import tasks

from .util import eval_batch, oracle_predictions


def parse(text):
    """Edges {src: dst} and queries [(start, k, answer)] from a decoded Depo sequence."""
    words = [w for w in text.split() if w != "<pad>"]
    first_query = words.index("?")
    edge_words, query_words = words[:first_query], words[first_query:]
    assert len(edge_words) % 4 == 0 and len(query_words) % 5 == 0
    edges = {}
    for src, arrow, dst, end in zip(*[iter(edge_words)] * 4):
        assert (arrow, end) == ("->", ";") and src not in edges
        edges[src] = dst
    queries = []
    for mark, start, hop, colon, answer in zip(*[iter(query_words)] * 5):
        assert (mark, colon) == ("?", ":") and hop.startswith("+")
        queries.append((start, int(hop[1:]), answer))
    return edges, queries


def walk(edges, start, hops):
    node = start
    for _ in range(hops):
        node = edges[node]
    return node


def assert_one_cycle(edges):
    assert sorted(edges) == sorted(edges.values())   # every node has one successor and one predecessor
    assert walk(edges, next(iter(edges)), len(edges)) == next(iter(edges))
    assert all(walk(edges, next(iter(edges)), k) != next(iter(edges)) for k in range(1, len(edges)))


@pytest.mark.parametrize("size", tasks.SIZES)
def test_answers_walk_the_cycle(size):
    task = tasks.make(tasks.default_config("depo", size))
    sizes = set()
    for split in ("train", "eval"):
        for index in range(20):
            example = task.dataset(split, 9)[index]
            edges, queries = parse(task.vocab.decode(example["tokens"]))
            assert 2 <= len(edges) <= task.nodes and len(queries) == task.answers
            sizes.add(len(edges))
            assert_one_cycle(edges)
            for start, hops, answer in queries:
                assert walk(edges, start, hops) == answer
            assert [k for _, k, _ in queries] == example["difficulty"].tolist()
            # The logits at each query's ':' predict its answer.
            scored = np.flatnonzero(example["loss_mask"])
            assert task.vocab.decode(example["tokens"][scored]) == " ".join([":"] * task.answers)
            assert task.vocab.decode(example["tokens"][scored + 1]).split() == [a for _, _, a in queries]
            record = task.describe(split, 9, index)
            assert {s: d for s, d in record["edges"]} == edges
            assert [(q["start"], q["k"], q["answer"]) for q in record["queries"]] == queries
    assert len(sizes) > 5   # cycle sizes vary up to the maximum (the paper: "at most 75 nodes")


def test_paper_layout_and_hop_range():
    task = tasks.make(tasks.default_config("depo"))
    example = task.dataset("train", 0)[0]
    words = task.vocab.decode(example["tokens"]).split()
    assert words[299] == ";" and words[300] == "?" and words[350:] == ["<pad>"] * 25
    hops = np.concatenate([task.dataset("train", 0)[i]["difficulty"] for i in range(200)])
    assert set(hops.tolist()) == set(range(1, 17))


def test_fewer_nodes_are_left_padded():
    config = tasks.default_config("depo", "tiny")
    config.min_nodes = 5
    task = tasks.make(config)
    sizes = set()
    for index in range(30):
        example = task.dataset("train", 0)[index]
        words = task.vocab.decode(example["tokens"]).split()
        edges, queries = parse(" ".join(words))
        assert_one_cycle(edges)
        assert all(walk(edges, s, k) == a for s, k, a in queries)
        assert words[:task.context_len - 4 * len(edges)] == ["<pad>"] * (task.context_len - 4 * len(edges))
        sizes.add(len(edges))
    assert min(sizes) >= 5 and max(sizes) <= task.nodes and len(sizes) > 3


def test_evaluator_oracle_and_random():
    task = tasks.make(tasks.default_config("depo", "tiny"))
    batch = eval_batch(task, task.eval_examples)
    oracle = oracle_predictions(batch["tokens"])
    evaluator = task.evaluator()
    evaluator.add(batch, oracle)
    result = evaluator.result()
    assert result["accuracy"] == 1.0 and result["examples"] == 256
    assert result["by_difficulty"] == {"k=1": 1.0, "k=2": 1.0, "k=4": 1.0, "k=8": 1.0}

    # Random guesses among each example's own n nodes: chance is the mean of 1 / n.
    rng = np.random.default_rng(0)
    random = oracle.copy()
    chance = []
    for b in range(len(random)):
        names = batch["tokens"][b, task.context_len - 4 * task.nodes:task.context_len:2]
        nodes = np.unique(names[names != task.vocab.pad_id])
        random[b] = rng.choice(nodes, random.shape[1])
        chance.append(1 / len(nodes))
    evaluator = task.evaluator()
    evaluator.add(batch, random)
    assert abs(evaluator.result()["accuracy"] - np.mean(chance)) < 0.03
