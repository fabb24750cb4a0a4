"""A character-level transformer language model on the ``fortunes`` collection
(``apt-get install fortunes``; ``--text FILE`` trains on any text instead)::

    Embedding(vocab, 64) + PositionalEmbedding(64, 64)
    2 x [x + CausalSelfAttention(LayerNorm(x)), 4 heads;  x + MLP(LayerNorm(x)), 64-256-64, GELU]
    LayerNorm(64) - Dense(64, vocab)

trained to predict each next character of 64-character windows with AdamW
(decoupled weight decay), a cosine learning-rate schedule with linear warm-up and
global-norm gradient clipping. Prints the validation loss and perplexity after
each epoch and, at the end, a continuation sampled from ``--prompt``.

    python examples/char_transformer.py [--backend torch] [--epochs 5] [--max-chars 0 --dim 128 --layers 4]

Writes to --out (default ``outputs/``): ``char_transformer.npz`` (the model),
``char_transformer_vocab.json`` (its vocabulary) and ``char_transformer_curves.png``.
"""

from __future__ import annotations

from typing import Any

import _text

import nnxp
from nnxp import layers


def build(vocab: int, seq_len: int, dim: int = 64, heads: int = 4, n_layers: int = 2, ff: int = 4,
          backend: str | None = None, dtype: str = "float32", seed: int = 0) -> nnxp.Sequential:
    """A pre-norm (GPT-2 style) decoder: token and learned position embeddings, ``n_layers`` blocks
    of causal self-attention and a ``dim``-``ff * dim``-``dim`` GELU MLP, each around a residual."""
    def block() -> nnxp.Sequential:
        return nnxp.Sequential([
            layers.Residual([layers.LayerNorm(dim), layers.MultiHeadAttention(dim, heads, causal=True)]),
            layers.Residual([layers.LayerNorm(dim), layers.Dense(dim, ff * dim), layers.GELU(),
                             layers.Dense(ff * dim, dim)]),
        ])

    return nnxp.Sequential([layers.Embedding(vocab, dim), layers.PositionalEmbedding(seq_len, dim),
                            *[block() for _ in range(n_layers)], layers.LayerNorm(dim), layers.Dense(dim, vocab)],
                           backend=backend, dtype=dtype, seed=seed)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _text.text_parser("Train a character-level transformer language model (causal self-attention) on the "
                          "fortunes collection or any text.", epochs=5, lr=1e-2, seq_len=64, batch_size=32,
                          max_chars=600_000)
    p.add_argument("--dim", type=int, default=64, help="embedding (model) width")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2, help="transformer blocks")
    args = p.parse_args(argv)
    return _text.run(args, lambda data: build(len(data.vocab), args.seq_len, args.dim, args.heads, args.layers,
                                              backend=args.backend, dtype=args.dtype, seed=args.seed),
                     "char_transformer", "Character transformer")


if __name__ == "__main__":
    main()
