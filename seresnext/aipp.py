"""Ascend AIPP (static mode) without Ascend: the config parser, and the AIPP compiled into ONNX operators.

On Ascend, ``atc --insert_op_conf=<config>`` puts an AIPP stage in front of the model: it takes the
uint8 image DVPP hands over and does, in this order (CANN's AIPP pipeline), the crop, the channel swap,
the colour-space conversion (CSC) and the normalisation ("DTC")::

    crop:   rows load_start_pos_h .. +crop_size_h, columns load_start_pos_w .. +crop_size_w
    swap:   rbuv_swap_switch swaps U and V (YUV input) or R and B (RGB input)
    CSC:    out = clip(((M @ (in - input_bias)) >> 8) + output_bias, 0, 255), M = matrix_r<i>c<j>
    DTC:    pixel = (out - mean_chn - min_chn) * var_reci_chn

:func:`compile_aipp` builds exactly that as ONNX operators (integer arithmetic done exactly in float32,
``>> 8`` as ``floor(/256)``, chroma upsampled by repetition) and :func:`insert_aipp` splices it in front of
a model, so ONNX Runtime runs the same thing ``atc`` would have built.

Input layouts (the graph's uint8 input, batch first):

* ``YUV420SP_U8``: ``[N, H*3/2, W]``, the Y plane (H rows) followed by H/2 rows of interleaved chroma
  pairs. The pair order is whatever the source hands over: Ascend's DVPP JPEG decoder hands over VU (NV21),
  which is why the standard TorchVision config sets ``rbuv_swap_switch : true`` (the swap makes it YUV
  before the CSC, whose first row ``256 0 359`` is R = Y + 1.402 (V - 128)).
* ``RGB888_U8``: ``[N, H, W, 3]`` packed; with ``rbuv_swap_switch : true`` the source is BGR.

:func:`encode_source` does the reverse for the runner's DVPP emulation: from an RGB image it makes the
buffer that this config turns back into that RGB image (the inverse of the config's CSC matrix, i.e. the
BT.601 full-range RGB->YUV for the standard matrix; 2x2-averaged chroma; VU order when the config swaps).
"""
from __future__ import annotations

from .aipp_config import (AIPP_METADATA_KEY, SUPPORTED_FORMATS, AippConfig, AippConfigError, config_from_metadata,
                          load_aipp_config, parse_aipp_config)
from .aipp_graph import apply_aipp_reference, compile_aipp, insert_aipp, onnx_opset
from .model_input import encode_source

__all__ = ["AippConfigError", "AippConfig", "parse_aipp_config", "load_aipp_config", "compile_aipp",
           "insert_aipp", "config_from_metadata", "encode_source", "apply_aipp_reference", "AIPP_METADATA_KEY",
           "SUPPORTED_FORMATS", "onnx_opset"]


def main(argv=None) -> int:
    """``python -m seresnext.aipp CONFIG``: check a config and say what the AIPP stage will do."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m seresnext.aipp", description=main.__doc__)
    parser.add_argument("config", help="AIPP config file, e.g. aipp_se_resnext50_32x4d_pth.config")
    config = load_aipp_config(parser.parse_args(argv).config)
    height, width = config.output_size
    steps = [f"{config.input_format} {config.src_image_size_w}x{config.src_image_size_h}"]
    if config.crop:
        steps.append(f"crop {width}x{height} at ({config.load_start_pos_w},{config.load_start_pos_h})")
    if config.rbuv_swap_switch:
        steps.append("swap " + ("U/V" if config.input_format == "YUV420SP_U8" else "R/B"))
    if config.csc_switch:
        steps.append("csc")
    steps.append("(x - mean - min) * var_reci -> float32 NCHW")
    print(f"aipp: {config.source}: " + ", ".join(steps))
    return 0


if __name__ == "__main__":
    import sys

    from .cli import run_main
    sys.exit(run_main(main, "seresnext.aipp"))
