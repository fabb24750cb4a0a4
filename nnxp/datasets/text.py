"""Text for character-level language models: a real English corpus from a
Debian package, a character vocabulary, and (inputs, next-character) windows.

The corpus is the ``fortunes`` package's collection of quotations, jokes and
verse (``apt-get install fortunes``: about 2.5 million characters under
``/usr/share/games/fortunes``, in ``strfile`` format: entries separated by
lines holding only ``%``). :func:`load_fortunes` reads it as a list of
entries; :func:`load_text` reads any UTF-8 text file. :func:`char_dataset`
turns either into training and validation windows::

    from nnxp import datasets
    data = datasets.char_dataset(datasets.load_fortunes(), seq_len=64)
    data.x_train.shape, data.y_train.shape     # (N, 64) int64 each; y is x shifted by one character
    data.vocab.decode(data.x_train[0])         # back to text

Everything here is host NumPy; ``fit`` moves the windows to the model's
backend once. The vocabulary is the sorted set of characters of the whole
text, so the same text always gives the same vocabulary (it can be rebuilt
from the text), and :meth:`CharVocab.save` / :meth:`CharVocab.load` keep it
beside a checkpoint as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .sources import DatasetNotFoundError

__all__ = ["FORTUNES_DIR", "FORTUNES_PACKAGE", "CharDataset", "CharVocab", "TextTooShortError", "char_dataset",
           "char_windows", "load_fortunes", "load_text", "read_strfile"]

FORTUNES_DIR = Path("/usr/share/games/fortunes")
"""Where Debian's ``fortunes`` (and ``fortunes-min``) packages install their files."""

FORTUNES_PACKAGE = "fortunes"
"""The Debian/Ubuntu package with the full collection (``fortunes-min`` has three of its files)."""


class TextTooShortError(ValueError):
    """A text is too short for the windows asked of it."""


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    # A few fortune files carry stray Latin-1 bytes: keep them as Latin-1 characters rather than fail.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_strfile(path: str | os.PathLike) -> list[str]:
    """The entries of one ``strfile``-format file (the text file, not its ``.dat`` index).

    Entries are separated by lines that hold only ``%``; each entry keeps its
    inner newlines and loses trailing whitespace; empty entries are dropped.

    Args:
        path: the text file, e.g. ``/usr/share/games/fortunes/literature``.

    Returns:
        The entries in file order.
    """
    text = _decode(Path(path).read_bytes()).replace("\r\n", "\n")
    entries, current = [], []
    for line in text.split("\n"):
        if line.rstrip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return [e.rstrip() for e in entries if e.strip()]


def _fortune_files(directory: Path) -> list[Path]:
    """The collection's text files: every regular file with a ``.dat`` index beside it."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix != ".dat"
                  and p.with_name(p.name + ".dat").is_file())


def load_fortunes(path: str | os.PathLike | None = None, files: Sequence[str] | None = None) -> list[str]:
    """The entries of the ``fortunes`` collection (quotations, jokes, verse) as a list of strings.

    Args:
        path: the directory of the collection (default :data:`FORTUNES_DIR`).
        files: the files to read by name, e.g. ``["literature", "wisdom"]``
            (default: every file of the collection, in name order).

    Returns:
        The entries, file by file in the order of ``files``.

    Raises:
        DatasetNotFoundError: the directory or a named file is missing; the
            message says which package installs them.
    """
    directory = Path(path) if path is not None else FORTUNES_DIR
    install = (f"Install it with `sudo apt-get install {FORTUNES_PACKAGE}` (Debian/Ubuntu), pass "
               "path= to a directory of strfile files, or train on any text file with nnxp.datasets.load_text.")
    if not directory.is_dir():
        raise DatasetNotFoundError(f"No fortune collection at {directory}. {install}", [f"{directory}: missing"])
    available = _fortune_files(directory)
    if files is None:
        chosen = available
        if not chosen:
            raise DatasetNotFoundError(f"{directory} holds no strfile files (text files with a .dat index). "
                                       f"{install}", [f"{directory}: no files"])
    else:
        names = {p.name: p for p in available}
        missing = [f for f in files if f not in names]
        if missing:
            hint = (f"the full collection is the package `{FORTUNES_PACKAGE}` (`fortunes-min` has only "
                    f"fortunes, literature and riddles)")
            raise DatasetNotFoundError(
                f"{directory} has no fortune file(s) {missing}; available: {sorted(names) or 'none'}; {hint}.",
                [f"{directory / m}: missing" for m in missing])
        chosen = [names[f] for f in files]
    return [entry for p in chosen for entry in read_strfile(p)]


def load_text(path: str | os.PathLike) -> str:
    """A text file as one string (UTF-8, Latin-1 where it is not valid UTF-8; ``\\r\\n`` -> ``\\n``).

    Raises:
        FileNotFoundError: no such file.
    """
    return _decode(Path(path).read_bytes()).replace("\r\n", "\n")


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------


class CharVocab:
    """A character vocabulary: character ``chars[i]`` has id ``i``.

    Args:
        chars: the characters in id order (a string or an iterable of
            one-character strings); duplicates are refused.
    """

    def __init__(self, chars: str | Iterable[str]) -> None:
        chars = tuple(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharVocab takes single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharVocab characters must be unique; repeated: {dup!r}")
        if not chars:
            raise ValueError("CharVocab needs at least one character")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        # code point -> id for the vectorised encode (code points above the table are unknown)
        top = max(ord(c) for c in chars)
        self._table = np.full(top + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in chars]] = np.arange(len(chars))

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> CharVocab:
        """The sorted set of characters of ``text`` (a string or several): the same text, the same vocabulary.

        Returns:
            The vocabulary.
        """
        seen: set[str] = set()
        for part in [text] if isinstance(text, str) else text:
            seen.update(part)
        if not seen:
            raise TextTooShortError("CharVocab.from_text got no characters: the text is empty.")
        return cls(sorted(seen))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        """Number of characters (the model's vocabulary size: ``Embedding`` rows, output classes)."""
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} characters: {''.join(self.chars)!r})"

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int64 array of ids.

        Raises:
            ValueError: ``text`` holds characters outside the vocabulary (named in the message).
        """
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.where(codes < len(self._table), self._table[np.minimum(codes, len(self._table) - 1)], -1)
        if ids.size and ids.min() < 0:
            unknown = sorted({text[i] for i in np.flatnonzero(ids < 0)[:1000]})
            raise ValueError(f"characters {unknown!r} are not in the vocabulary of {len(self)} characters. "
                             "Build the vocabulary from all the text the model will see (CharVocab.from_text), "
                             "or remove those characters first.")
        return ids

    def decode(self, ids: Any) -> str:
        """Ids (a sequence or an array of any backend, any shape: flattened) back to text.

        Raises:
            ValueError: an id lies outside ``[0, size)``.
        """
        from ..backends import to_numpy

        arr = np.asarray(to_numpy(ids) if hasattr(ids, "shape") else ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self)):
            raise ValueError(f"ids in [{arr.min()}, {arr.max()}] but the vocabulary has ids 0..{len(self) - 1}")
        return "".join(self.chars[i] for i in arr.tolist())

    def config(self) -> dict[str, Any]:
        """A JSON-able description (``{"chars": "..."}``) that :meth:`from_config` rebuilds."""
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CharVocab:
        """The vocabulary :meth:`config` describes."""
        return cls(config["chars"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (atomically, like checkpoints), e.g. beside the model's ``.npz``."""
        from ..io import atomic_write

        data = json.dumps({"format": "nnxp-char-vocab", **self.config()}, ensure_ascii=True).encode()
        atomic_write(path, lambda f: f.write(data))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        """Read a vocabulary written by :meth:`save`.

        Raises:
            ValueError: the file is not a saved vocabulary.
        """
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a saved CharVocab (not JSON: {exc})") from exc
        if not isinstance(data, dict) or data.get("format") != "nnxp-char-vocab":
            raise ValueError(f"{path} is not a saved CharVocab (no format 'nnxp-char-vocab')")
        return cls.from_config(data)


# ---------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------


def char_windows(ids: np.ndarray, seq_len: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut a sequence of ids into training windows with next-character targets.

    Window ``i`` starts at ``i * stride``: ``x[i] = ids[s:s + seq_len]`` and
    ``y[i] = ids[s + 1:s + seq_len + 1]``, so ``y[i, t]`` is the character
    that follows ``x[i, t]``. The tail that does not fill a window is dropped.

    Args:
        ids: 1-d integer array (e.g. :meth:`CharVocab.encode`'s).
        seq_len: window length ``T``.
        stride: distance between window starts (default ``seq_len``: each
            character is a target once).

    Returns:
        ``(x, y)``, two int64 arrays of shape ``(windows, seq_len)`` (copies).

    Raises:
        TextTooShortError: fewer than ``seq_len + 1`` ids.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"char_windows takes a 1-d integer array, got {ids.dtype} of shape {ids.shape}")
    seq_len = _positive_int("seq_len", seq_len)
    stride = seq_len if stride is None else _positive_int("stride", stride)
    if ids.size < seq_len + 1:
        raise TextTooShortError(
            f"{ids.size} characters give no window: one needs seq_len + 1 = {seq_len + 1} (inputs and the "
            "next-character targets). Use a shorter seq_len or more text.")
    win = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    win = np.ascontiguousarray(win, dtype=np.int64)
    return win[:, :-1].copy(), win[:, 1:].copy()


def _positive_int(name: str, v: Any) -> int:
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


@dataclass
class CharDataset:
    """Training and validation windows of a text and its vocabulary (see :func:`char_dataset`).

    Attributes:
        x_train, y_train: int64 ``(N, seq_len)`` inputs and next-character targets.
        x_val, y_val: the same for the held-out text (``(0, seq_len)`` when none is held out).
        vocab: the :class:`CharVocab` of the whole text.
        train_text, val_text: the two texts the windows were cut from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    vocab: CharVocab
    train_text: str
    val_text: str

    @property
    def seq_len(self) -> int:
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:
        return (f"CharDataset({len(self.train_text):,} training and {len(self.val_text):,} validation characters, "
                f"{len(self.x_train):,} + {len(self.x_val):,} windows of {self.seq_len}, "
                f"{len(self.vocab)} distinct characters)")


def char_dataset(text: str | Sequence[str], seq_len: int, val_fraction: float = 0.1, stride: int | None = None,
                 max_chars: int | None = None, seed: int = 0, vocab: CharVocab | None = None,
                 separator: str = "\n\n") -> CharDataset:
    """Split a text (or a list of documents) into training and validation windows.

    A list of documents (e.g. :func:`load_fortunes`'s entries) is shuffled
    with ``seed`` and cut between documents, so validation holds whole
    documents the model never trained on, drawn from every part of the
    collection; the documents of each side are joined with ``separator``. A
    single string is cut at a position: its last ``val_fraction`` is
    validation.

    Args:
        text: one string, or a sequence of documents.
        seq_len: window length ``T`` (see :func:`char_windows`).
        val_fraction: share of the characters held out for validation, in ``[0, 1)``.
        stride: distance between training window starts (default ``seq_len``);
            validation windows never overlap.
        max_chars: use at most this many characters in all (documents are
            taken in shuffled order until the budget is spent; a string is cut).
        seed: the document shuffle.
        vocab: the vocabulary (default: :meth:`CharVocab.from_text` of the
            whole text and the separator, before ``max_chars`` cuts it, so that a
            model trained on a part still encodes the rest).

    Returns:
        A :class:`CharDataset`.

    Raises:
        TextTooShortError: a side gets fewer than ``seq_len + 1`` characters.
        ValueError: bad arguments, or characters outside a given ``vocab``.
    """
    seq_len = _positive_int("seq_len", seq_len)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    if max_chars is not None:
        max_chars = _positive_int("max_chars", max_chars)
    if vocab is None:  # the separator joins documents: its characters are part of the text
        vocab = CharVocab.from_text(text if isinstance(text, str) else [*text, separator])
    if isinstance(text, str):
        whole = text[:max_chars] if max_chars is not None else text
        cut = len(whole) - round(len(whole) * float(val_fraction))
        train_text, val_text = whole[:cut], whole[cut:]
    else:
        docs = [d for d in text if d]
        order = np.random.default_rng(seed).permutation(len(docs))
        docs = [docs[i] for i in order]
        if max_chars is not None:
            kept, used = [], 0
            for d in docs:
                if used >= max_chars:
                    break
                kept.append(d)
                used += len(d) + len(separator)
            docs = kept
        total = sum(len(d) + len(separator) for d in docs)
        val_docs, used = [], 0
        while docs and used < total * float(val_fraction) and len(val_docs) < len(docs) - 1:
            used += len(docs[len(val_docs)]) + len(separator)
            val_docs.append(docs[len(val_docs)])
        train_text = separator.join(docs[len(val_docs):])
        val_text = separator.join(val_docs)
    need = seq_len + 1
    if len(train_text) < need:
        raise TextTooShortError(
            f"the training text has {len(train_text):,} characters, but one window needs seq_len + 1 = {need}. "
            "Use more text (a larger max_chars, more files), a shorter seq_len or a smaller val_fraction.")
    if val_fraction > 0 and len(val_text) < need:
        raise TextTooShortError(
            f"the validation text has {len(val_text):,} characters, but one window needs seq_len + 1 = {need}. "
            "Use more text, a larger val_fraction, a shorter seq_len, or val_fraction=0 for no validation.")
    x, y = char_windows(vocab.encode(train_text), seq_len, stride)
    if val_fraction > 0:
        xv, yv = char_windows(vocab.encode(val_text), seq_len)
    else:
        xv = yv = np.zeros((0, seq_len), dtype=np.int64)
    return CharDataset(x, y, xv, yv, vocab, train_text, val_text)
