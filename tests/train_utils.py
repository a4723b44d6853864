"""Helpers shared by the training tests: tiny ImageFolder datasets and in-process runs of main.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 220), (40, 220, 220)]


def make_image_folder(root: Path, classes: int = 4, train: int = 4, val: int = 3, size: int = 40,
                      seed: int = 0, names: bool = True) -> Path:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``: noisy flat colours, one per class, so a
    few steps already learn something; plus ``synset_words.txt`` when ``names``."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{1000 + i:08d}" for i in range(classes)]
    for split, count in (("train", train), ("val", val)):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = np.array(COLORS[c % len(COLORS)])[None, None, :] + rng.normal(0, 30, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{wnid}_{k}.JPEG")
    if names:
        (root / "synset_words.txt").write_text("".join(f"{w} colour {i}, a test class\n"
                                                       for i, w in enumerate(wnids)))
    return root


def corrupt(path: Path) -> Path:
    """Overwrite an image with bytes no decoder accepts."""
    path.write_bytes(b"this is not a JPEG" * 4)
    return path


TINY = ["--image-size", "32", "-b", "8", "-j", "0", "--print-freq", "1", "--eval-freq", "1", "--seed", "0",
        "--lr", "0.01", "--device", "cpu"]
"""Flags of the small, deterministic CPU runs the tests use (16 train images: 2 steps per epoch)."""


def run_main(argv: list[str]) -> int:
    """``main.py`` in this process (model warm-up is paid once per test session)."""
    import main
    return main.run([str(a) for a in argv])


def run_script(argv: list[str], env: dict | None = None, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """A command in a subprocess from the repository root, with the test environment."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([str(a) for a in argv], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def python() -> str:
    return sys.executable


def load(path: Path) -> dict:
    """A checkpoint, loaded the strict way (weights only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (exact comparison)."""
    return [k for k in a if not torch.equal(a[k], b[k])]
