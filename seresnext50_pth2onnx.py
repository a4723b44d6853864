"""Cadene weight file (``se_resnext50_32x4d-a260b3a4.pth``) or a training checkpoint to ONNX.

    python seresnext50_pth2onnx.py ./se_resnext50_32x4d-a260b3a4.pth ./se_resnext50_32x4d.onnx

Input ``image`` (float32 NCHW), output ``class``, dynamic batch, opset 11 (what ``atc`` needs; ``--opset``
to change). Never downloads anything. The export is checked (opset, onnx checker, ONNX Runtime against
torch on a random batch) before the file is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seresnext.cli import run_main
from seresnext.export import add_export_arguments, export_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seresnext50_pth2onnx.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_file", help="se_resnext50_32x4d-a260b3a4.pth or model_best.pth.tar")
    parser.add_argument("output_file", help="the .onnx to write")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    export_checkpoint(args.input_file, args.output_file, args, input_name="image", output_name="class",
                      batch_size=None, prog="seresnext50_pth2onnx")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "seresnext50_pth2onnx.py"))
