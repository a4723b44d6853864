"""``--regroup`` of :mod:`seresnext.build` (opt-in, fp32 for the CPU): grouped convolutions with a few channels
per group rewritten into groups of the CPU's NCHWc block, so that ONNX Runtime's blocked kernels take them.
Not the default: what it gains and costs is measured in ``docs/offline_inference.md``.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx

__all__ = ["nchwc_block_size", "regroup_convs"]


def nchwc_block_size() -> int:
    """Channels per block of ONNX Runtime's NCHWc CPU kernels (MLAS): 16 with AVX-512, else 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


def regroup_convs(model: onnx.ModelProto, block: int, max_factor: int = 2) -> int:
    """Merge the groups of grouped convolutions that have fewer than ``block`` channels per group, so that
    each new group has ``block`` input and output channels; returns how many convolutions were rewritten.

    ONNX Runtime blocks a grouped convolution into its NCHWc layout only when the input and output channels
    per group are multiples of ``block``; otherwise it runs a plain kernel and reorders its input and output.
    Merging ``k`` groups into one with a block-diagonal weight (zeros off the diagonal blocks) gives the same
    result and costs ``k`` times that convolution's FLOPs; rewritten only where ``k <= max_factor``.
    """
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    uses = collections.Counter(name for node in model.graph.node for name in node.input)
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        if uses[node.input[1]] > 1:  # a weight shared with another node stays as it is
            continue
        group = next((a for a in node.attribute if a.name == "group"), None)
        if group is None or group.i <= 1:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        out_channels, per_group = weight.shape[:2]
        if out_channels % group.i or out_channels // group.i != per_group or per_group % block == 0:
            continue
        if block % per_group or block // per_group > max_factor or group.i % (block // per_group):
            continue
        factor = block // per_group
        merged = np.zeros((out_channels, block, *weight.shape[2:]), dtype=weight.dtype)
        for out in range(out_channels):
            slot = (out // per_group) % factor
            merged[out, slot * per_group:(slot + 1) * per_group] = weight[out]
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(merged, node.input[1]))
        group.i //= factor
        rewritten += 1
    return rewritten
