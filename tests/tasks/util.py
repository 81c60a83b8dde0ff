"""Helpers shared by the task tests."""
import ast
import pathlib
import sysconfig

import numpy as np


def oracle_predictions(tokens: np.ndarray) -> np.ndarray:
    """Predictions `[B, T]` that are right everywhere: position i predicts token i + 1."""
    predictions = np.zeros_like(tokens)
    predictions[:, :-1] = tokens[:, 1:]
    return predictions


def eval_batch(task, count: int) -> dict:
    """The first `count` eval examples (seed 0) of a task as one batch."""
    dataset = task.dataset("eval", 0)
    return {key: np.stack([dataset[i][key] for i in range(count)]) for key in dataset[0]}


def write_tiny_tokenizer(path, texts=()) -> str:
    """A word-level `tokenizer.json` (+ `tokenizer_config.json` naming `<eos>` and `<pad>`) in
    directory `path`, trained on GSM-Infinite generator text, `texts` and the numbers 0..99
    (every value a generated problem can state, `gsm_infinite.MAX_VALUE`)."""
    import json
    import os

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from sleep_jax.tasks import gsm_infinite

    rng = np.random.default_rng(0)
    corpus = [gsm_infinite.generate(rng, ops, 400).text for ops in (1, 2, 3, 4) for _ in range(3)]
    words = gsm_infinite.WORDS + tuple(map(str, range(gsm_infinite.MAX_VALUE + 1)))
    corpus += [gsm_infinite.ANSWER_PREFIX, " ".join(words), *texts]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<eos>", "[UNK]"]))
    os.makedirs(path, exist_ok=True)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<eos>", "pad_token": "<pad>"}, f)
    return str(path)


def english_docstrings(limit: int = 1_000_000) -> list[str]:
    """Docstrings of the standard library's top-level modules (sorted), about `limit` characters."""
    texts, size = [], 0
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
                    size += len(doc)
        if size >= limit:
            break
    return texts


def write_bpe_tokenizer(path) -> str:
    """A byte-level BPE of 16k tokens (as GPT-2's or Qwen's), trained on English docstrings and a
    few generated problems (about 4 characters a token on GSM-Infinite text), saved in directory
    `path` as `tokenizer.json` + `tokenizer_config.json`."""
    import json
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from sleep_jax.tasks.gsm_infinite import generator

    rng = np.random.default_rng(0)
    corpus = english_docstrings() + [generator.generate(rng, 1 + i % 8, 1500).text for i in range(5)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=16_000, special_tokens=["<eos>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    os.makedirs(path, exist_ok=True)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<eos>", "pad_token": "<pad>"}, f)
    return str(path)
