"""Online inference demo: images in, top-k classes with names and probabilities out. No network.

    python demo.py                                   # ./model_best.pth.tar on a sample image
    python demo.py cat.jpg dog.jpg --topk 3
    python demo.py --checkpoint se_resnext50_32x4d-a260b3a4.pth photo.jpg

Loads a training checkpoint or Cadene's weight file, runs on the best available device (npu, cuda, cpu),
and names classes with the checkpoint's own names, or ImageNet's for 1000-class models. Without an image it
uses a photo that ships with matplotlib (grace_hopper.jpg).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from seresnext.cli import ToolError, run_main

DEFAULT_CHECKPOINT = "./model_best.pth.tar"


def sample_image() -> str:
    """A real photo available offline: matplotlib's sample data."""
    try:
        from matplotlib.cbook import get_sample_data
        return str(get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception:  # matplotlib missing or built without sample data
        raise ToolError("no image given and matplotlib's sample image is not available: pass an image path") \
            from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files (default: a sample photo)")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="model_best.pth.tar or se_resnext50_32x4d-a260b3a4.pth (default %(default)s)")
    parser.add_argument("--topk", type=int, default=5, help="classes to show per image (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda/gpu or npu")
    args = parser.parse_args(argv)
    if args.topk < 1:
        raise ToolError(f"--topk must be at least 1, got {args.topk}")
    if not Path(args.checkpoint).is_file():
        hint = (" (train one with main.py, or pass --checkpoint se_resnext50_32x4d-a260b3a4.pth)"
                if args.checkpoint == DEFAULT_CHECKPOINT else "")
        raise ToolError(f"--checkpoint {args.checkpoint}: no such file{hint}")
    images = args.images or [sample_image()]
    for image in images:
        if not Path(image).is_file():
            raise ToolError(f"{image}: no such image file")

    from seresnext.devices import make_device, normalize_device_type
    from seresnext.predict import class_names, classify, load_model

    device = make_device(normalize_device_type(args.device))
    model, info = load_model(args.checkpoint)
    model = model.to(device)
    epoch = f", epoch {info.epoch}" if info.epoch is not None else ""
    print(f"demo: {args.checkpoint} ({info.num_classes} classes{epoch}) on {device}")
    predictions = classify(model, images, class_names(info), topk=args.topk, device=device,
                           crop=info.image_size or 224)
    for image, top in zip(images, predictions):
        print(f"{image}:")
        for rank, prediction in enumerate(top, 1):
            print(f"  {rank}. {prediction.probability:7.2%}  {prediction.name} ({prediction.index})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "demo.py"))
