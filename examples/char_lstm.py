"""A character-level LSTM language model on the ``fortunes`` collection
(``apt-get install fortunes``; ``--text FILE`` trains on any text instead)::

    Embedding(vocab, 64) - LSTM(64, 256) over the window - Dense(256, vocab) at every step

trained to predict each next character of 64-character windows (backpropagation
through the whole window) with AdamW, a cosine learning-rate schedule with
warm-up and global-norm gradient clipping. Prints the validation loss and
perplexity after each epoch and, at the end, a continuation sampled from
``--prompt`` (each character predicted from the last 64, the state starting at
zero as in training).

    python examples/char_lstm.py [--backend torch] [--epochs 5] [--max-chars 0 --hidden 512]

Writes to --out (default ``outputs/``): ``char_lstm.npz`` (the model),
``char_lstm_vocab.json`` (its vocabulary) and ``char_lstm_curves.png``.
"""

from __future__ import annotations

from typing import Any

import _text

import nnxp
from nnxp import layers


def build(vocab: int, embed: int = 64, hidden: int = 256, backend: str | None = None, dtype: str = "float32",
          seed: int = 0) -> nnxp.Sequential:
    """Embedding, one LSTM returning every step's state, and a Dense read-out per step."""
    return nnxp.Sequential([layers.Embedding(vocab, embed), layers.LSTM(embed, hidden), layers.Dense(hidden, vocab)],
                           backend=backend, dtype=dtype, seed=seed)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _text.text_parser("Train a character-level LSTM language model on the fortunes collection or any text.",
                          epochs=5, lr=1e-2, seq_len=64, batch_size=32, max_chars=600_000)
    p.add_argument("--embed", type=int, default=64, help="character embedding width")
    p.add_argument("--hidden", type=int, default=256, help="LSTM state size")
    args = p.parse_args(argv)
    return _text.run(args, lambda data: build(len(data.vocab), args.embed, args.hidden, backend=args.backend,
                                              dtype=args.dtype, seed=args.seed),
                     "char_lstm", "Character LSTM")


if __name__ == "__main__":
    main()
