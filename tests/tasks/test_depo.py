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


def test_hop_curriculum_opens_the_hop_range_by_example_index():
    config = tasks.default_config("depo", "tiny")
    config.update(hops_train=(1, 2, 3, 4), hops_curriculum=400)
    task = tasks.make(config)
    train = task.dataset("train", 0)

    def hops_in(first, stop):
        return set(np.concatenate([train[i]["difficulty"] for i in range(first, stop)]).tolist())

    assert hops_in(0, 100) == {1}            # examples 0..99: the first value only
    assert hops_in(100, 200) == {1, 2}
    assert hops_in(300, 500) == {1, 2, 3, 4}
    assert task.open_hops(399) == 4 and task.open_hops(10**9) == 4
    config.hops_curriculum = -1
    with pytest.raises(ValueError, match="hops_curriculum"):
        tasks.make(config)


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
    # Each eval example asks one k (eval_hops in turn), so every bucket holds 64 examples.
    hops = [task.problem("eval", 0, index).hops for index in range(task.eval_examples)]
    assert all(len(set(h.tolist())) == 1 for h in hops)
    assert np.bincount([h[0] for h in hops]).tolist() == [0, 64, 64, 0, 64, 0, 0, 0, 64]

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
