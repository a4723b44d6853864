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
from seresnext.export import DEFAULT_OPSET, checkpoint_metadata, export_onnx, load_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seresnext50_pth2onnx.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_file", help="se_resnext50_32x4d-a260b3a4.pth or model_best.pth.tar")
    parser.add_argument("output_file", help="the .onnx to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height and width (default: the checkpoint's, else 224)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest ONNX Runtime vs torch difference accepted (default %(default)g)")
    args = parser.parse_args(argv)
    model, info = load_model(args.input_file)
    report = export_onnx(model, args.output_file, input_name="image", output_name="class", batch_size=None,
                         image_size=args.image_size or info.image_size or 224, opset=args.opset,
                         atol=args.atol, metadata=checkpoint_metadata(info))
    print(f"seresnext50_pth2onnx: {args.input_file} ({info.num_classes} classes) -> {report.path}: opset "
          f"{report.opset}, input image{report.input_shape}, onnx checker ok, ONNX Runtime vs torch max abs "
          f"diff {report.max_abs_diff:.3g} (batch {report.check_batch})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "seresnext50_pth2onnx.py"))
