"""Shared helpers for the offline-chain tests: real JPEGs of many kinds, the upstream reference
preprocessing, models with realistic activations, and running the top-level scripts in-process."""
from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STANDARD_AIPP = ROOT / "aipp_se_resnext50_32x4d_pth.config"

# (width, height, mode, format): sizes around the resize/crop edge cases, grayscale, CMYK, PNG content.
IMAGE_SPECS = [
    (500, 375, "RGB", "JPEG"), (375, 500, "RGB", "JPEG"), (256, 256, "RGB", "JPEG"),
    (300, 256, "RGB", "JPEG"),  # short side already 256
    (256, 401, "RGB", "JPEG"), (201, 180, "RGB", "JPEG"),  # upscaled
    (1000, 200, "RGB", "JPEG"), (225, 301, "RGB", "JPEG"),
    (320, 240, "L", "JPEG"), (333, 500, "CMYK", "JPEG"), (290, 310, "RGB", "PNG"),
    (260, 270, "P", "PNG"),
]


def synthetic_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth picture with edges and noise (compresses like a photo, not like white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    picture = np.stack([np.sin(xx / (6 + seed % 5)) * 70 + 120,
                        np.cos(yy / (8 + seed % 3)) * 70 + 120,
                        ((xx * 0.7 + yy * 1.3) % 255)], axis=-1)
    picture[(xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 4) ** 2] = (200, 40, 60)
    return np.clip(picture + rng.normal(0, 12, picture.shape), 0, 255).astype(np.uint8)


def write_image(path: Path, width: int, height: int, mode: str = "RGB", fmt: str = "JPEG",
                seed: int = 0) -> Path:
    """Write one real image; ``fmt`` is the content format whatever the file name says."""
    image = Image.fromarray(synthetic_rgb(width, height, seed))
    if mode == "P":
        image = image.quantize(64)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def make_val_folder(folder: Path, specs=IMAGE_SPECS, start: int = 1) -> list[Path]:
    """ILSVRC2012_val_XXXXXXXX.JPEG files (PNG content keeps the .JPEG name, as in real ImageNet)."""
    return [write_image(folder / f"ILSVRC2012_val_{start + i:08d}.JPEG", w, h, mode, fmt, seed=start + i)
            for i, (w, h, mode, fmt) in enumerate(specs)]


# --------------------------------------------------------------------------------------------------
# Upstream's preprocessing exactly as upstream wrote it (numpy on a PIL image), kept independent of
# seresnext.preprocess on purpose: the tests compare the two byte for byte.
def upstream_resize(img, size, interpolation=Image.BILINEAR):
    w, h = img.size
    if (w <= h and w == size) or (h <= w and h == size):
        return img
    if w < h:
        ow = size
        oh = int(size * h / w)
        return img.resize((ow, oh), interpolation)
    oh = size
    ow = int(size * w / h)
    return img.resize((ow, oh), interpolation)


def upstream_center_crop(img, out_height, out_width):
    height, width, _ = img.shape
    left = int((width - out_width) / 2)
    right = int((width + out_width) / 2)
    top = int((height - out_height) / 2)
    bottom = int((height + out_height) / 2)
    return img[top:bottom, left:right]


def upstream_preprocess_bytes(path: Path) -> bytes:
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    img = Image.open(path).convert('RGB')
    img = upstream_resize(img, 256)
    img = np.array(img, dtype=np.float32)
    img = upstream_center_crop(img, 224, 224)
    img = img / 255.
    img[..., 0] -= mean[0]
    img[..., 1] -= mean[1]
    img[..., 2] -= mean[2]
    img[..., 0] /= std[0]
    img[..., 1] /= std[1]
    img[..., 2] /= std[2]
    img = img.transpose(2, 0, 1)
    return img.tobytes()


# --------------------------------------------------------------------------------------------------
def calibrated_model(num_classes: int = 10, seed: int = 0, image_size: int = 64):
    """SE-ResNeXt50_32x4d with seeded weights and BatchNorm statistics measured on random batches, so
    activations and logits have a realistic scale (a freshly initialised model outputs near-zeros).

    As in trained ResNets, each block's last BatchNorm scale is small, so blocks refine rather than
    scramble their input: a random network that amplifies rounding noise block after block would make
    any two correct fp32 implementations differ by more than a trained model's ~1e-5.
    """
    import torch

    from seresnext.model import se_resnext50_32x4d

    torch.manual_seed(seed)
    model = se_resnext50_32x4d(num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # set here, whatever the model's own initialisation does
        for name, module in model.named_modules():
            if name.endswith(".bn3"):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.2 + 0.1)
        model.last_linear.weight.copy_(torch.randn(model.last_linear.weight.shape, generator=generator) * 0.25)
        for _ in range(2):
            model(torch.randn(8, 3, image_size, image_size, generator=generator))
    return model.eval()


def run_tool(module, argv, prog: str | None = None) -> tuple[int, str, str]:
    """Run a top-level script's ``main`` in-process as its ``__main__`` would; (status, stdout, stderr)."""
    from seresnext.cli import run_main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = run_main(module.main, prog or Path(module.__file__).name, list(map(str, argv)))
        except SystemExit as exc:  # argparse usage errors
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def env_with_repo() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


PYTHON = sys.executable


# --------------------------------------------------------------------------------------------------
# A "trained" small model for agreement checks: classes are colour families (what a wrong channel
# order or colour conversion would break), images vary in size and aspect ratio (what DVPP's squash
# resize changes), and the head is fitted (ridge regression) on the real SE-ResNeXt's features.
HUES = ((200, 40, 40), (40, 170, 60), (50, 70, 210), (220, 200, 40))


def colour_class_image(path: Path, cls: int, seed: int) -> Path:
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    width = int(rng.integers(80, 160))
    height = int(width / rng.uniform(1.0, 1.34))  # ImageNet-like aspect ratios, either orientation
    if rng.integers(2):
        width, height = height, width
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3) // 2 + 64))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in np.clip(np.array(HUES[cls]) + rng.integers(-30, 30, 3), 0, 255))
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.ellipse([x0, y0, x0 + int(rng.integers(width // 4, width // 2 + 1)),
                      y0 + int(rng.integers(height // 4, height // 2 + 1))], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.filter(ImageFilter.GaussianBlur(1)).save(path, quality=90)
    return path


def probe_trained_model(images: list[tuple[Path, int]], resize: int, crop: int, ridge: float = 100.0):
    """calibrated_model with ``last_linear`` fitted to ``(image, class)`` pairs on the .bin preprocessing."""
    import torch

    from seresnext.preprocess import preprocess_image

    classes = max(c for _, c in images) + 1
    model = calibrated_model(num_classes=classes, image_size=crop)
    batch = torch.from_numpy(np.stack([preprocess_image(p, resize=resize, crop=crop) for p, _ in images]))
    with torch.no_grad():
        features = torch.flatten(model.avg_pool(model.features(batch)), 1).double().numpy()
    targets = np.eye(classes)[[c for _, c in images]] - 1.0 / classes
    mean = features.mean(axis=0)
    centred = features - mean
    weight = np.linalg.solve(centred.T @ centred + ridge * np.eye(features.shape[1]), centred.T @ targets)
    with torch.no_grad():
        model.last_linear.weight.copy_(torch.from_numpy(weight.T * 10))
        model.last_linear.bias.copy_(torch.from_numpy(-(mean @ weight) * 10))
    return model
