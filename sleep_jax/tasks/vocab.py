"""Vocabularies: a fixed list of token strings, encoded by characters or by words, fully offline.

Two kinds share one class:

- character level (`word_level=False`): every token is one character, except special tokens written
  in angle brackets (`"<pad>"`, `"<eos>"`), which `encode` recognises as whole tokens and `decode`
  writes back verbatim. Used by Rule 110 and GSM-Infinite.
- word level (`word_level=True`): `encode` splits on whitespace and looks each word up; `decode`
  joins tokens with single spaces. Used by Depo, whose node names are single tokens.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

PAD = "<pad>"


class Vocab:
    """A token list with `size`, `encode(str) -> list[int]`, `decode(ids) -> str` and special ids.

    Args:
      tokens: the token strings; token `i` has id `i`. Must be unique and contain `"<pad>"`.
      word_level: split text on whitespace (True) or into characters and `<...>` specials (False).
      separator: the token that opens the scored part of a sequence, if the task uses one.
      eos: the token that ends an answer, if the task uses one.

    Attributes:
      size: number of tokens (ids are in `[0, size)`).
      pad_id: id of `"<pad>"`.
      sep_id, eos_id: ids of `separator` and `eos`, or None where the task has none.
    """

    def __init__(self, tokens: Sequence[str], *, word_level: bool, separator: str | None = None,
                 eos: str | None = None):
        self.tokens = tuple(tokens)
        self.word_level = word_level
        self._ids = {token: i for i, token in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            raise ValueError("tokens must be unique")
        for token in (PAD, separator, eos):
            if token is not None and token not in self._ids:
                raise ValueError(f"special token {token!r} is not in tokens")
        if not word_level:
            for token in self.tokens:
                if len(token) != 1 and not (token.startswith("<") and token.endswith(">")):
                    raise ValueError(f"character-level token {token!r} must be one character or <special>")
            specials = sorted((t for t in self.tokens if len(t) > 1), key=len, reverse=True)
            self._pieces = re.compile("|".join([re.escape(t) for t in specials] + ["(?s:.)"]))
            # Fast path for plain text: a byte -> id table (-1 where the byte is not a token).
            self._byte_ids = np.full(256, -1, np.int32)
            for token, i in self._ids.items():
                if len(token) == 1 and ord(token) < 128:
                    self._byte_ids[ord(token)] = i
        self.size = len(self.tokens)
        self.pad_id = self._ids[PAD]
        self.sep_id = None if separator is None else self._ids[separator]
        self.eos_id = None if eos is None else self._ids[eos]

    def id(self, token: str) -> int:
        """The id of one token string; ValueError if it is not in the vocabulary."""
        try:
            return self._ids[token]
        except KeyError:
            raise ValueError(f"token {token!r} is not in the vocabulary") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; ValueError naming the first symbol that is not a token."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Like `encode`, as an int32 numpy array (the fast path used by the generators)."""
        if self.word_level:
            return np.asarray([self.id(word) for word in text.split()], np.int32)
        if "<" not in text and text.isascii():
            ids = self._byte_ids[np.frombuffer(text.encode("ascii"), np.uint8)]
            if (ids >= 0).all():
                return ids
        return np.asarray([self.id(piece) for piece in self._pieces.findall(text)], np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (ints or a numpy array); ValueError on an id outside `[0, size)`."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            bad = ids[(ids < 0) | (ids >= self.size)][0]
            raise ValueError(f"token id {int(bad)} is outside [0, {self.size})")
        return (" " if self.word_level else "").join(self.tokens[i] for i in ids.tolist())


class TokenizerVocab:
    """A pretrained model's tokenizer (`tokenizer.json`, read by `tokenizers`) with `Vocab`'s
    interface: `size`, `encode`, `encode_array`, `decode`, `id`, `pad_id`, `eos_id`, `sep_id`.

    `encode` adds no special tokens. The end-of-answer token is the directory's
    `tokenizer_config.json` `eos_token`; padding is its `pad_token`, else the end token.

    Args:
      path: a directory holding `tokenizer.json` (and `tokenizer_config.json`).
    """

    word_level = False
    sep_id = None

    def __init__(self, path: str):
        import json
        import os

        from tokenizers import Tokenizer

        file = os.path.join(path, "tokenizer.json")
        if not os.path.exists(file):
            raise ValueError(f"task.tokenizer={path!r}: no tokenizer.json in that directory")
        self.path = path
        self._tokenizer = Tokenizer.from_file(file)
        special = {}
        config_file = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(config_file):
            with open(config_file) as f:
                special = json.load(f)

        def token_of(key):
            value = special.get(key)
            return value.get("content") if isinstance(value, dict) else value

        eos = token_of("eos_token")
        if eos is None:
            raise ValueError(f"task.tokenizer={path!r}: tokenizer_config.json names no eos_token "
                             "(the token that ends an answer)")
        self.eos_id = self.id(eos)
        pad = token_of("pad_token")
        self.pad_id = self.eos_id if pad is None else self.id(pad)
        self.size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def id(self, token: str) -> int:
        """The id of one token string; ValueError if it is not in the vocabulary."""
        value = self._tokenizer.token_to_id(token)
        if value is None:
            raise ValueError(f"token {token!r} is not in the vocabulary of {self.path}")
        return value

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids; ValueError on an id outside `[0, size)`."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            bad = ids[(ids < 0) | (ids >= self.size)][0]
            raise ValueError(f"token id {int(bad)} is outside [0, {self.size})")
        return self._tokenizer.decode(ids.tolist(), skip_special_tokens=False)
