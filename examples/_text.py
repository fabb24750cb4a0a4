"""What the two character-level language models share: their options, the text
(the ``fortunes`` collection, or any text file), training with validation
perplexity per epoch, the checkpoint with its vocabulary, the curves, and
sampling a continuation from a prompt."""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import out_path, parser

import nnxp
from nnxp import datasets, losses, optim, schedules


def text_parser(description: str, epochs: int, lr: float, seq_len: int, batch_size: int,
                max_chars: int) -> argparse.ArgumentParser:
    """The options of the text examples; the defaults given here size one epoch."""
    p = parser(description)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--seq-len", type=int, default=seq_len, help="characters per training window (context length)")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate of the cosine schedule")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps of the schedule")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay")
    p.add_argument("--clip-norm", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    p.add_argument("--max-chars", type=int, default=max_chars,
                   help="characters of text used in all, training and validation (0: the whole text)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the text held out for validation")
    p.add_argument("--text", default=None, metavar="PATH",
                   help="train on this UTF-8 text file instead of the fortunes collection")
    p.add_argument("--fortunes-dir", default=None, help=f"the collection's folder (default {datasets.FORTUNES_DIR})")
    p.add_argument("--files", default=None,
                   help="comma-separated fortune files, e.g. literature,wisdom (default: all of them)")
    p.add_argument("--prompt", default="The ", help="start of the sampled continuation")
    p.add_argument("--sample-chars", type=int, default=300, help="characters to sample after training (0: none)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (lower: more conservative)")
    # The products here are small ((2048, 64) @ (64, 256)): a second BLAS thread gains little, and on a
    # machine shared with other jobs its busy-waiting made steps 4-6x slower (measured: 90 vs 566 ms for the
    # transformer, 174 vs 775 ms for the LSTM, interleaved, load average 5-7 on 2 cores).
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (threadpoolctl; default 1, see the README; 0 leaves the library's choice)")
    p.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 a line per epoch")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help="save the curves PNG")
    return p


def load(args: argparse.Namespace) -> datasets.CharDataset:
    """The windows of ``--text`` or of the fortunes collection (documents shuffled, whole ones held out)."""
    if args.text:
        text: Any = datasets.load_text(args.text)
        source = args.text
    else:
        files = [f.strip() for f in args.files.split(",") if f.strip()] if args.files else None
        text = datasets.load_fortunes(args.fortunes_dir, files)
        source = f"fortunes ({len(text):,} entries{', ' + args.files if args.files else ''})"
    data = datasets.char_dataset(text, args.seq_len, val_fraction=args.val_fraction,
                                 max_chars=args.max_chars or None, seed=args.seed)
    print(f"Text: {source}; {data}")
    return data


def cosine_adamw(args: argparse.Namespace, steps: int) -> optim.AdamW:
    """AdamW (decoupled weight decay) on a cosine schedule with linear warm-up, global-norm clipping."""
    total = max(steps * args.epochs, 1)
    warmup = min(args.warmup, total // 10)  # short runs (smoke tests) still spend most steps at the peak
    lr = schedules.CosineWarmup(args.lr, total_steps=total, warmup_steps=warmup, min_lr=args.lr / 10)
    return optim.AdamW(lr=lr, weight_decay=args.weight_decay, clip_norm=args.clip_norm or None)


def limit_threads(n: int | None) -> Any:
    """Cap the BLAS threads at ``n`` for the rest of the run (``None``: leave them)."""
    if not n:
        return None
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def run(args: argparse.Namespace, build_net: Callable[[datasets.CharDataset], nnxp.Sequential], stem: str,
        title: str) -> dict[str, Any]:
    """What both examples' ``main`` does: cap the BLAS threads (``--threads``), load the text,
    build the model for its vocabulary, print its summary, then :func:`train_and_report`; the
    thread limit is lifted again however the run ends.

    Args:
        args: the parsed options of :func:`text_parser` (plus the example's own).
        build_net: makes the model from the loaded data (its vocabulary sets the sizes).
        stem: file name stem of the checkpoint, vocabulary and curves.
        title: title of the curves plot.

    Returns:
        What :func:`train_and_report` returns.
    """
    limits = limit_threads(args.threads)
    try:
        data = load(args)
        net = build_net(data)
        if args.verbose:
            print(net.summary((args.seq_len,)))
        return train_and_report(net, data, args, stem, title)
    finally:
        if limits is not None:
            limits.restore_original_limits()


def train_and_report(net: nnxp.Sequential, data: datasets.CharDataset, args: argparse.Namespace,
                     stem: str, title: str) -> dict[str, Any]:
    """Fit with validation, print validation loss and perplexity per epoch, save the checkpoint
    (``<stem>.npz``, its vocabulary ``<stem>_vocab.json``) and the curves, and sample a continuation.

    Returns:
        ``{"val_perplexity": [...], "val_loss": [...], "epoch_time": [...], "sample": str, "history": History,
        "model": net}``.
    """
    steps = -(-len(data.x_train) // args.batch_size)
    opt = cosine_adamw(args, steps)
    has_val = len(data.x_val) > 0

    def report(model: nnxp.Sequential, epoch: int, logs: dict[str, float]) -> None:
        if not args.verbose:
            return
        val = (f"val loss {logs['val_loss']:.4f}, val perplexity {math.exp(logs['val_loss']):.2f}, "
               if has_val else "")
        print(f"epoch {epoch}: train loss {logs['loss']:.4f}, {val}{logs['time']:.1f} s "
              f"({steps} steps of {args.batch_size} x {data.seq_len} characters)", flush=True)

    print(f"{title} on {net.backend.name} ({net.dtype}), {net.num_params():,} parameters; "
          f"{args.epochs} epochs of {steps} steps; AdamW lr {args.lr:g} (cosine, {opt.schedule.warmup_steps} warm-up "
          "steps), "
          f"weight decay {args.weight_decay:g}, clip norm {args.clip_norm:g}")
    t0 = time.perf_counter()
    hist = net.fit(data.x_train, data.y_train, loss=losses.SoftmaxCrossEntropy(), optimizer=opt,
                   epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                   validation_data=(data.x_val, data.y_val) if has_val else None,
                   verbose=1 if args.verbose == 1 else 0, metrics=(), callbacks=[report])
    total = time.perf_counter() - t0
    val_loss = hist["val_loss"] if has_val else []
    ppl = [math.exp(v) for v in val_loss]
    print(f"{title}: {total / max(args.epochs, 1):.1f} s per epoch on {net.backend.name}; validation perplexity "
          f"by epoch: {', '.join(f'{p:.2f}' for p in ppl) or 'n/a'} (a uniform guess: {len(data.vocab)})")

    ckpt = out_path(args.out, f"{stem}.npz")
    net.save(ckpt)
    vocab_path = out_path(args.out, f"{stem}_vocab.json")
    data.vocab.save(vocab_path)
    print(f"checkpoint: {ckpt} (vocabulary: {vocab_path})")
    if args.plot and len(hist):
        curves = out_path(args.out, f"{stem}_curves.png")
        plot_curves(hist, curves, f"{title} on {net.backend.name}")
        print(f"curves: {curves}")
    sample = ""
    if args.sample_chars > 0:
        sample = generate(net, data.vocab, args.prompt, args.sample_chars, args.temperature,
                          context=data.seq_len, seed=args.seed)
        print(f"--- sample (temperature {args.temperature:g}, prompt {args.prompt!r}) ---\n{sample}\n---")
    return {"val_loss": val_loss, "val_perplexity": ppl, "epoch_time": list(hist["time"]), "sample": sample,
            "history": hist, "model": net}


def generate(net: nnxp.Sequential, vocab: datasets.CharVocab, prompt: str, length: int, temperature: float = 1.0,
             context: int = 64, seed: int = 0) -> str:
    """Sample ``length`` characters after ``prompt``, one at a time.

    Each step runs the model on the last ``context`` characters (the window
    length it was trained on), turns the logits of the last position into
    probabilities ``softmax(logits / temperature)`` and draws the next
    character from them with a host generator seeded by ``seed``. A prompt
    shorter than ``context`` is preceded by newlines (as a text after a blank
    line), so that every step has the same shape: eager JAX then compiles each
    operation once instead of once per prompt length.

    Returns:
        ``prompt`` followed by the sampled characters.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    pad = vocab.index.get("\n", 0)
    ids = [pad] * max(context - len(prompt), 0) + list(vocab.encode(prompt))
    start = len(ids)
    rng = np.random.default_rng(seed)
    for _ in range(length):
        window = np.asarray(ids[-context:], dtype=np.int64)[None, :]
        logits = nnxp.to_numpy(net.predict(window))[0, -1].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return prompt + vocab.decode(np.asarray(ids[start:], dtype=np.int64))


def plot_curves(hist: Any, path: str, title: str) -> None:
    """Loss (training and validation) and validation perplexity per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(hist.epochs, hist["loss"], "o-", label="train")
    if "val_loss" in hist:
        ax1.plot(hist.epochs, hist["val_loss"], "s--", label="validation")
        ax2.plot(hist.epochs, [math.exp(v) for v in hist["val_loss"]], "s--", color="C1", label="validation")
    ax2.plot(hist.epochs, [math.exp(v) for v in hist["loss"]], "o-", color="C0", label="train (running)")
    for ax, name in ((ax1, "cross-entropy (nats per character)"), (ax2, "perplexity")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_model(stem_path: str, backend: str | None = None) -> tuple[nnxp.Sequential, datasets.CharVocab]:
    """A saved model and its vocabulary: ``<stem>.npz`` and ``<stem>_vocab.json``."""
    base = stem_path[:-4] if stem_path.endswith(".npz") else stem_path
    if not os.path.exists(base + "_vocab.json"):
        raise FileNotFoundError(f"{base}_vocab.json (the vocabulary saved beside {base}.npz) is missing")
    return nnxp.load(base + ".npz", backend=backend), datasets.CharVocab.load(base + "_vocab.json")
