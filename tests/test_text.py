"""Text for character language models (nnxp.datasets.text): the strfile reader on
small files written here, the vocabulary, the windows, the document-level split,
the errors; and the real ``fortunes`` package where it is installed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nnxp import datasets
from nnxp.datasets import CharVocab, TextTooShortError

FORTUNES = datasets.FORTUNES_DIR
needs_fortunes = pytest.mark.skipif(
    not (FORTUNES / "fortunes.dat").is_file(),
    reason=f"no fortune collection in {FORTUNES} (apt-get install fortunes)",
)

ENTRIES = ["A penny saved is a penny earned.", "Two roads diverged in a wood,\nand I --\ntook the one less traveled.",
           "Know thyself.", "Ars longa, vita brevis."]


def _collection(tmp_path: Path, files: dict[str, list[str]]) -> Path:
    """A strfile collection: one text file per name (entries between '%' lines) and an empty .dat beside it."""
    d = tmp_path / "fortunes"
    d.mkdir()
    for name, entries in files.items():
        (d / name).write_text("\n%\n".join(entries) + "\n%\n")
        (d / f"{name}.dat").write_bytes(b"")
    (d / "wisdom.u8").symlink_to(d / "wisdom")  # Debian's .u8 links are not read twice
    return d


def test_read_strfile_keeps_inner_newlines(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("first\n%\nsecond line one\nsecond line two  \n%\n%\n\n%\nlast, no trailing separator")
    assert datasets.read_strfile(p) == ["first", "second line one\nsecond line two", "last, no trailing separator"]


def test_read_strfile_latin1_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"caf\xe9\r\n%\r\nna\xefve")
    assert datasets.read_strfile(p) == ["caf\u00e9", "na\u00efve"]


def test_load_fortunes(tmp_path: Path) -> None:
    d = _collection(tmp_path, {"wisdom": ENTRIES[:2], "art": ENTRIES[2:]})
    assert datasets.load_fortunes(d) == [*ENTRIES[2:], *ENTRIES[:2]]  # files in name order
    assert datasets.load_fortunes(d, files=["wisdom"]) == ENTRIES[:2]
    with pytest.raises(datasets.DatasetNotFoundError, match=r"no fortune file\(s\) \['zippy'\]; available: "
                                                            r"\['art', 'wisdom'\].*package `fortunes`"):
        datasets.load_fortunes(d, files=["zippy"])


def test_load_fortunes_missing_says_which_package(tmp_path: Path) -> None:
    with pytest.raises(datasets.DatasetNotFoundError, match=r"No fortune collection at .*apt-get install fortunes") \
            as info:
        datasets.load_fortunes(tmp_path / "nowhere")
    assert info.value.tried and isinstance(info.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(datasets.DatasetNotFoundError, match=r"holds no strfile files.*apt-get install fortunes"):
        datasets.load_fortunes(tmp_path / "empty")


def test_vocab_round_trip(tmp_path: Path) -> None:
    text = "hello, world\n\u00e9t\u00e9"
    v = CharVocab.from_text(text)
    assert v.chars == tuple(sorted(set(text))) and len(v) == v.size == len(set(text))
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert v.decode(ids) == text and v.decode(ids.tolist()) == text
    assert v.decode(ids.reshape(2, -1)) == text
    assert CharVocab.from_text(["hel", "lo, world", "\n\u00e9t\u00e9"]) == v  # documents give the same
    path = tmp_path / "vocab.json"
    v.save(path)
    assert CharVocab.load(path) == v and CharVocab.from_config(v.config()) == v
    assert v.encode("") .shape == (0,) and v.decode([]) == ""


def test_vocab_errors(tmp_path: Path) -> None:
    v = CharVocab("abc")
    with pytest.raises(ValueError, match=r"characters \['x', 'z'\] are not in the vocabulary.*from_text"):
        v.encode("abxcz")
    with pytest.raises(ValueError, match=re.escape("['\U0001F600'] are not in the vocabulary")):
        v.encode("a\U0001F600")
    with pytest.raises(ValueError, match=r"ids in \[0, 3\] but the vocabulary has ids 0..2"):
        v.decode([0, 3])
    with pytest.raises(ValueError, match="unique; repeated: \\['a'\\]"):
        CharVocab("aba")
    with pytest.raises(ValueError, match="single characters"):
        CharVocab(["ab"])
    with pytest.raises(TextTooShortError, match="empty"):
        CharVocab.from_text("")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a saved CharVocab"):
        CharVocab.load(bad)


def test_char_windows_targets_are_the_next_characters() -> None:
    ids = np.arange(11)
    x, y = datasets.char_windows(ids, 4)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(y, x + 1)
    x2, y2 = datasets.char_windows(ids, 4, stride=3)
    np.testing.assert_array_equal(x2[:, 0], [0, 3, 6])
    np.testing.assert_array_equal(y2, x2 + 1)
    assert x.dtype == y.dtype == np.int64 and x.flags.writeable
    with pytest.raises(TextTooShortError, match=r"4 characters give no window: one needs seq_len \+ 1 = 5"):
        datasets.char_windows(np.arange(4), 4)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        datasets.char_windows(ids, 0)
    with pytest.raises(ValueError, match="1-d integer array"):
        datasets.char_windows(np.zeros(5), 2)


def test_char_dataset_from_string() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    data = datasets.char_dataset(text, 16, val_fraction=0.2)
    assert data.train_text + data.val_text == text and len(data.val_text) == 200
    assert data.x_train.shape == (49, 16) and data.x_val.shape == (12, 16) and data.seq_len == 16
    assert data.vocab.decode(data.x_train[0]) == text[:16] and data.vocab.decode(data.y_train[0]) == text[1:17]
    assert data.vocab.decode(data.x_val[0]) == text[800:816]
    assert "49 + 12 windows of 16" in repr(data)
    cut = datasets.char_dataset(text, 16, val_fraction=0.0, max_chars=100)
    assert cut.train_text == text[:100] and cut.x_val.shape == (0, 16)


def test_char_dataset_from_documents_holds_out_whole_ones() -> None:
    docs = [f"document number {i} says {'x' * (i % 7)}." for i in range(200)]
    data = datasets.char_dataset(docs, 8, val_fraction=0.1, seed=3)
    val_docs, train_docs = data.val_text.split("\n\n"), data.train_text.split("\n\n")
    assert set(val_docs).isdisjoint(train_docs) and sorted(val_docs + train_docs) == sorted(docs)
    assert 0.08 < len(data.val_text) / (len(data.val_text) + len(data.train_text)) < 0.13
    assert datasets.char_dataset(docs, 8, seed=3).train_text == data.train_text  # seeded
    assert datasets.char_dataset(docs, 8, seed=4).train_text != data.train_text
    assert data.vocab == CharVocab.from_text([*docs, "\n\n"])
    small = datasets.char_dataset(docs, 8, max_chars=1000, seed=3)
    assert len(small.train_text) + len(small.val_text) < 1100


def test_char_dataset_too_short() -> None:
    with pytest.raises(TextTooShortError, match=r"training text has 9 characters.*seq_len \+ 1 = 17.*shorter seq_len"):
        datasets.char_dataset("abcdefghij", 16)
    with pytest.raises(TextTooShortError, match=r"validation text has 5 characters.*val_fraction=0"):
        datasets.char_dataset("abcdefghijklmnopqrstuvwxyz" * 2, 8, val_fraction=0.1)
    with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\)"):
        datasets.char_dataset("abc", 1, val_fraction=1.0)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        datasets.char_dataset("abcdef" * 10, 4, vocab=CharVocab("abc"))


def test_load_text(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_bytes("line one\r\nline \u00e9\r\n".encode())
    assert datasets.load_text(p) == "line one\nline \u00e9\n"
    with pytest.raises(FileNotFoundError):
        datasets.load_text(tmp_path / "missing.txt")


@needs_fortunes
def test_real_fortunes_collection() -> None:
    entries = datasets.load_fortunes()
    assert len(entries) > 1000 and all(e and e == e.rstrip() for e in entries)
    assert not any(line.strip() == "%" for e in entries[:500] for line in e.split("\n"))
    data = datasets.char_dataset(entries, 64, max_chars=200_000)
    assert data.x_train.shape[1] == 64 and len(data.x_train) > 2000 and len(data.x_val) > 200
    assert set(" etaoinETAOIN.,\n") <= set(data.vocab.chars)
    assert data.vocab.decode(data.x_train[5])[1:] == data.vocab.decode(data.y_train[5])[:-1]
