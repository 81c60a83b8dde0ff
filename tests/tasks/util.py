"""Helpers shared by the task tests."""
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
