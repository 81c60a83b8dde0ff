"""Vocab: character- and word-level round trips, special tokens, errors."""
import numpy as np
import pytest

from sleep_jax.tasks.vocab import PAD, Vocab


def char_vocab():
    return Vocab((PAD, "<eos>", "a", "b", "<", " "), word_level=False, eos="<eos>")


def test_char_round_trip_with_specials():
    vocab = char_vocab()
    ids = vocab.encode("ab <<eos><pad>a")
    assert ids == [2, 3, 5, 4, 1, 0, 2]
    assert vocab.decode(ids) == "ab <<eos><pad>a"
    assert (vocab.size, vocab.pad_id, vocab.eos_id, vocab.sep_id) == (6, 0, 1, None)


def test_char_fast_path_matches_slow_path():
    vocab = char_vocab()
    np.testing.assert_array_equal(vocab.encode_array("abba a"), vocab.encode_array("abba a<pad>")[:-1])
    assert vocab.encode_array("abba a").dtype == np.int32


def test_word_round_trip():
    vocab = Vocab((PAD, "?", "N0", "N10"), word_level=True, separator="?")
    assert vocab.encode("? N10  N0\n<pad>") == [1, 3, 2, 0]
    assert vocab.decode(np.array([1, 3, 2])) == "? N10 N0"
    assert vocab.sep_id == 1


def test_errors():
    vocab = char_vocab()
    with pytest.raises(ValueError, match="'c' is not in the vocabulary"):
        vocab.encode("abc")
    with pytest.raises(ValueError, match=r"token id 6 is outside \[0, 6\)"):
        vocab.decode([0, 6])
    with pytest.raises(ValueError, match="unique"):
        Vocab((PAD, "a", "a"), word_level=False)
    with pytest.raises(ValueError, match="'<sep>' is not in tokens"):
        Vocab((PAD, "a"), word_level=False, separator="<sep>")
    with pytest.raises(ValueError, match="one character"):
        Vocab((PAD, "ab"), word_level=False)
