"""The AIPP stage as ONNX operators (what ``atc`` would build) and its numpy reference. The stages are
described in :mod:`seresnext.aipp`; the DVPP source encoding the runner emulates is in :mod:`seresnext.model_input`.
"""
from __future__ import annotations

import numpy as np

from .aipp_config import AIPP_METADATA_KEY, AippConfig, AippConfigError

__all__ = ["compile_aipp", "insert_aipp", "apply_aipp_reference", "onnx_opset"]


# ----------------------------------------------------------------------------------------------- reference
def _unpack(config: AippConfig, source: np.ndarray) -> np.ndarray:
    """uint8 source ``[N, ...]`` -> ``[N, H, W, 3]`` (YUV420SP chroma repeated 2x2)."""
    if config.input_format == "RGB888_U8":
        return source
    h = config.src_image_size_h
    luma = source[:, :h, :]
    chroma = source[:, h:, :].reshape(source.shape[0], h // 2, -1, 2)
    chroma = chroma.repeat(2, axis=1).repeat(2, axis=2)
    return np.concatenate([luma[..., None], chroma], axis=-1)


def apply_aipp_reference(config: AippConfig, source: np.ndarray) -> np.ndarray:
    """What the AIPP stage hands the model (float32 NCHW), computed directly in numpy (integer CSC)."""
    pixels = _unpack(config, np.asarray(source, dtype=np.uint8))
    if config.crop:
        top, left = config.load_start_pos_h, config.load_start_pos_w
        pixels = pixels[:, top:top + config.crop_size_h, left:left + config.crop_size_w]
    pixels = pixels[..., config.swap_order()].astype(np.int64)
    if config.csc_switch:
        matrix = np.array(config.matrix, dtype=np.int64)
        converted = (pixels - np.array(config.input_bias)) @ matrix.T
        pixels = np.clip((converted >> 8) + np.array(config.output_bias), 0, 255)
    out = (pixels.astype(np.float32) - np.array(config.mean_chn, dtype=np.float32)
           - np.array(config.min_chn, dtype=np.float32)) * np.array(config.var_reci_chn, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- ONNX
def compile_aipp(config: AippConfig, *, input_name: str, output_name: str, batch: int | str,
                 opset: int = 11):
    """The AIPP stage as an ONNX graph: uint8 ``config.input_shape(batch)`` -> float32 NCHW (opset >= 11)."""
    if opset < 11:
        raise ValueError(f"the AIPP stage needs opset 11 or later, the model has opset {opset}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), f"aipp_const_{name}"))
        return f"aipp_const_{name}"

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"aipp_{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    h, w = config.src_image_size_h, config.src_image_size_w
    if config.input_format == "YUV420SP_U8":
        luma = node("Slice", [input_name, const("y_start", np.array([0], np.int64)),
                              const("y_end", np.array([h], np.int64)), const("rows", np.array([1], np.int64))],
                    "luma")
        chroma = node("Slice", [input_name, const("uv_start", np.array([h], np.int64)),
                                const("uv_end", np.array([h * 3 // 2], np.int64)), "aipp_const_rows"], "chroma_rows")
        chroma = node("Reshape", [chroma, const("uv_shape", np.array([-1, h // 2, 1, w // 2, 1, 2], np.int64))],
                      "chroma_blocks")
        chroma = node("Expand", [chroma, const("uv_repeat", np.array([1, 1, 2, 1, 2, 1], np.int64))],
                      "chroma_repeated")
        chroma = node("Reshape", [chroma, const("uv_full", np.array([-1, h, w, 2], np.int64))], "chroma")
        if opset >= 13:
            luma = node("Unsqueeze", [luma, const("channel_axis", np.array([3], np.int64))], "luma_hwc")
        else:
            luma = node("Unsqueeze", [luma], "luma_hwc", axes=[3])
        pixels = node("Concat", [luma, chroma], "yuv", axis=3)
    else:
        pixels = input_name
    if config.crop:
        top, left = config.load_start_pos_h, config.load_start_pos_w
        pixels = node("Slice", [pixels, const("crop_start", np.array([top, left], np.int64)),
                                const("crop_end", np.array([top + config.crop_size_h, left + config.crop_size_w],
                                                           np.int64)),
                                const("crop_axes", np.array([1, 2], np.int64))], "crop")
    if config.rbuv_swap_switch:
        pixels = node("Gather", [pixels, const("swap", np.array(config.swap_order(), np.int64))], "swap", axis=3)
    pixels = node("Cast", [pixels], "float", to=TensorProto.FLOAT)
    if config.csc_switch:
        pixels = node("Sub", [pixels, const("input_bias", np.array(config.input_bias, np.float32))], "csc_in")
        matrix_t = np.array(config.matrix, dtype=np.float32).T.copy()
        pixels = node("MatMul", [pixels, const("matrix_t", matrix_t)], "csc_mul")
        pixels = node("Div", [pixels, const("shift", np.array(256.0, np.float32))], "csc_div")
        pixels = node("Floor", [pixels], "csc_shift")
        pixels = node("Add", [pixels, const("output_bias", np.array(config.output_bias, np.float32))], "csc_out")
        pixels = node("Clip", [pixels, const("zero", np.array(0.0, np.float32)),
                               const("max", np.array(255.0, np.float32))], "csc_clip")
    if any(config.mean_chn):
        pixels = node("Sub", [pixels, const("mean_chn", np.array(config.mean_chn, np.float32))], "mean")
    pixels = node("Sub", [pixels, const("min_chn", np.array(config.min_chn, np.float32))], "min")
    pixels = node("Mul", [pixels, const("var_reci_chn", np.array(config.var_reci_chn, np.float32))], "var")
    nodes.append(helper.make_node("Transpose", [pixels], [output_name], name="aipp_nchw", perm=[0, 3, 1, 2]))

    out_h, out_w = config.output_size
    graph = helper.make_graph(
        nodes, "aipp",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, config.input_shape(batch))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 3, out_h, out_w])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def insert_aipp(model, config: AippConfig, source: str = "the model"):
    """``model`` with the AIPP stage in front of its (only) input; the input keeps its name.

    The model's input must be float32 ``[N, 3, H, W]`` with ``(H, W)`` equal to the AIPP output size,
    as ``atc`` requires. The config is recorded in the model's metadata for the runner.
    """
    import onnx

    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise ValueError(f"{source}: AIPP needs a model with one input, it has {len(inputs)}")
    model_input = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
            for d in model_input.type.tensor_type.shape.dim]
    if model_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise ValueError(f"{source}: AIPP needs a float32 [N, 3, H, W] input, {model_input.name} is {dims}")
    out_h, out_w = config.output_size
    if (dims[2], dims[3]) != (out_h, out_w):
        raise AippConfigError(f"{config.source or 'AIPP config'}: hands the model {out_w}x{out_h} "
                              f"(crop_size_w/h or src_image_size_w/h) but {source} takes "
                              f"{dims[3]}x{dims[2]} ({model_input.name}{dims})")
    opset = onnx_opset(model)
    name = model_input.name
    bridge = "aipp_output"
    stage = compile_aipp(config, input_name=name, output_name=bridge, batch=dims[0], opset=opset)
    for n in graph.node:
        for index, value in enumerate(n.input):
            if value == name:
                n.input[index] = bridge
    for value_info in list(graph.value_info):
        if value_info.name == name:
            graph.value_info.remove(value_info)
    new_nodes = list(stage.graph.node) + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(stage.graph.initializer)
    graph.input.remove(model_input)
    graph.input.insert(0, stage.graph.input[0])
    entry = model.metadata_props.add()
    entry.key, entry.value = AIPP_METADATA_KEY, config.to_json()
    return model


def onnx_opset(model) -> int:
    """The default-domain opset an ONNX model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no default-domain opset")
