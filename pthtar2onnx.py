"""Training checkpoint (``model_best.pth.tar``) to ONNX, with upstream's defaults.

    python pthtar2onnx.py                       # ./model_best.pth.tar -> ./se_resnext50_gpu8p.onnx
    python pthtar2onnx.py ckpt.pth.tar out.onnx --batch-size 1
    python pthtar2onnx.py ckpt.pth.tar out.onnx --dynamic-batch

Input ``actual_input_1``, output ``output1``, static batch 16, opset 11, as upstream. DDP ``module.``
prefixes are stripped; the class count is read from the checkpoint. The export is checked (opset, onnx
checker, ONNX Runtime against torch) before the file is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seresnext.cli import run_main
from seresnext.export import DEFAULT_OPSET, checkpoint_metadata, export_onnx, load_model


def main(argv: Sequence[str] | None = None, prog: str = "pthtar2onnx.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="./model_best.pth.tar",
                        help="training checkpoint or weight file (default %(default)s)")
    parser.add_argument("output", nargs="?", default="se_resnext50_gpu8p.onnx",
                        help="the .onnx to write (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="static batch size (default %(default)s)")
    parser.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch axis instead")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height and width (default: the checkpoint's, else 224)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest ONNX Runtime vs torch difference accepted (default %(default)g)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, info = load_model(args.checkpoint)
    report = export_onnx(model, args.output, input_name="actual_input_1", output_name="output1",
                         batch_size=None if args.dynamic_batch else args.batch_size,
                         image_size=args.image_size or info.image_size or 224, opset=args.opset,
                         atol=args.atol, metadata=checkpoint_metadata(info))
    epoch = f", epoch {info.epoch}" if info.epoch is not None else ""
    print(f"{prog}: {args.checkpoint} ({info.num_classes} classes{epoch}) -> {report.path}: opset "
          f"{report.opset}, input actual_input_1{report.input_shape}, onnx checker ok, ONNX Runtime vs torch "
          f"max abs diff {report.max_abs_diff:.3g} (batch {report.check_batch})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "pthtar2onnx.py"))
