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
from seresnext.export import add_export_arguments, export_checkpoint


def main(argv: Sequence[str] | None = None, prog: str = "pthtar2onnx.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="./model_best.pth.tar",
                        help="training checkpoint or weight file (default %(default)s)")
    parser.add_argument("output", nargs="?", default="se_resnext50_gpu8p.onnx",
                        help="the .onnx to write (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="static batch size (default %(default)s)")
    parser.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch axis instead")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    export_checkpoint(args.checkpoint, args.output, args, input_name="actual_input_1", output_name="output1",
                      batch_size=None if args.dynamic_batch else args.batch_size, prog=prog)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "pthtar2onnx.py"))
