"""Shared command-line bits of the examples."""

from __future__ import annotations

import argparse
import os
import sys

# Run from a checkout without installing: make `import nnxp` find the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nnxp


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", default=None,
                   help="numpy, cupy, cupy:1, array_api_strict, ... (default: $NNXP_BACKEND or numpy); "
                        f"available here: {', '.join(nnxp.available_backends())}")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial parameters and shuffling")
    p.add_argument("--out", default="outputs", help="folder for checkpoints and PNGs")
    return p


def out_path(folder: str, name: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)
