"""The ONNX Runtime stand-in for Ascend's ``atc``: ONNX model -> deployable ONNX model for the runner.

It takes atc's own flags (``--model --framework=5 --output --input_format=NCHW --input_shape="image:16,3,224,224"
--insert_op_conf=<aipp config> --log --soc_version``), so ``se_resnext50_32x4d_atc.sh`` passes the same
command line to whichever is installed. What it does, in order:

1. fixes the input shape (static batch, as ``atc`` does) and checks it against the model;
2. ``--precision=int8``: static int8 quantization (QLinear operators: uint8 activations, per-channel int8
   weights; on this CPU faster than the QDQ form) calibrated on ``.bin`` files from ``--calib_dir`` (ONNX
   Runtime's quantization tool);
3. ``--insert_op_conf``: compiles the AIPP config into ONNX operators in front of the model
   (:mod:`seresnext.aipp`);
4. ``--regroup`` (opt-in, fp32 for the CPU): rewrites grouped convolutions with a few channels per group
   (layer2's 8) into groups of the CPU's NCHWc block (16 with AVX-512, else 8) with zero weights between the
   old groups, so that ONNX Runtime's blocked kernels take them instead of the plain ones and the layout
   reorders around them (:func:`regroup_convs`; exact but for float summation order; at most 2x the FLOPs
   of those convolutions). Not the default: what it gains and costs is measured in ``docs/offline_inference.md``;
5. runs ONNX Runtime's graph optimizations once and saves the result (offline mode), by default at the
   extended level for the target execution provider: the runner then does not redo them at every start.
   Layout optimizations are specific to the CPU they were made on (ONNX Runtime's docs), so they are saved
   only with ``--optimization=all`` and otherwise run online;
6. checks the built model against the source on a random batch (fp32: max abs diff; int8: top-1
   agreement), on the target's provider (CUDA with TF32 off, so that float32's tolerance holds), and writes
   ``<output>.onnx`` atomically, with what was done in its metadata.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .aipp import AIPP_METADATA_KEY, insert_aipp, load_aipp_config, onnx_opset
from .formats import atomic_write, read_bin
from .runner import CUDA_OPTIONS, provider_problem
from .regroup import nchwc_block_size, regroup_convs

__all__ = ["BuildError", "BuildOptions", "build", "parse_input_shape", "describe_input", "BUILD_METADATA_KEY",
           "main"]

BUILD_METADATA_KEY = "seresnext.build"
TARGET_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# What can be saved: basic (any provider), extended (the target provider), all (adds layout changes such as
# NCHWc blocking, specific to this machine's CPU; ONNX Runtime's docs: only for compatible hardware).
OPTIMIZATION_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class BuildError(ValueError):
    """A model or flag the build cannot use; the message names the flag or the file."""


@dataclass(frozen=True)
class BuildOptions:
    model: str
    output: str
    input_shape: str
    insert_op_conf: str | None = None
    precision: str = "fp32"
    calib_dir: str | None = None
    calib_count: int = 64
    target: str = "cpu"
    optimization: str = "extended"
    verify: bool = True
    soc_version: str | None = None
    regroup: bool = False


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """atc's ``--input_shape="name:16,3,224,224"`` (one input) -> ("name", [16, 3, 224, 224])."""
    name, sep, dims = text.strip("\"'").rpartition(":")
    try:
        shape = [int(d) for d in dims.split(",")]
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise BuildError(f"--input_shape={text!r}: expected 'name:N,C,H,W' with positive sizes, e.g. "
                         f"'image:16,3,224,224' (one input)")
    return name, shape


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _model_inputs(model: onnx.ModelProto) -> list:
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def describe_input(model_path: str, batch_size: int, image_size: int | None = None,
                   input_name: str | None = None) -> str:
    """atc's ``--input_shape`` for a model, read from its graph: ``name:batch,C,H,W``.

    The name is the graph's one input (``image`` from seresnext50_pth2onnx.py, ``actual_input_1`` from
    pthtar2onnx.py) and H, W its static size; ``image_size`` fills a dynamic size (default 224) and must
    agree with a static one; ``input_name`` must be the graph's.
    """
    if not Path(model_path).is_file():
        raise BuildError(f"--model={model_path}: no such file")
    try:
        model = onnx.load(model_path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise BuildError(f"--model={model_path}: not an ONNX model ({exc.__class__.__name__}: {exc})") from None
    inputs = _model_inputs(model)
    if len(inputs) != 1:
        raise BuildError(f"--model={model_path}: one model input expected, found {len(inputs)} "
                         f"({', '.join(i.name for i in inputs)})")
    name, dims = inputs[0].name, _dims(inputs[0])
    if input_name and input_name != name:
        raise BuildError(f"--input_name={input_name}: {model_path}'s input is {name}{dims}")
    if len(dims) != 4:
        raise BuildError(f"--model={model_path}: input {name}{dims} is not NCHW images")
    channels = dims[1] if isinstance(dims[1], int) else 3
    static = [d for d in dims[2:] if isinstance(d, int)]
    if static and image_size and any(d != image_size for d in static):
        raise BuildError(f"--image_size={image_size} but {model_path} takes {name}{dims}; leave --image_size out "
                         f"or export the model at {image_size}")
    height = dims[2] if isinstance(dims[2], int) else (image_size or 224)
    width = dims[3] if isinstance(dims[3], int) else (image_size or 224)
    return f"{name}:{batch_size},{channels},{height},{width}"


def _fix_shape(model: onnx.ModelProto, name: str, shape: list[int], source: str) -> None:
    """Set the input to ``shape`` (a static batch); the other dims must already agree."""
    graph = model.graph
    inputs = _model_inputs(model)
    names = [i.name for i in inputs]
    if name not in names:
        raise BuildError(f"--input_shape: {source} has no input {name!r} (its inputs: {', '.join(names)})")
    if len(inputs) != 1:
        raise BuildError(f"{source}: one model input expected, found {len(inputs)}")
    value_info = inputs[0]
    current = _dims(value_info)
    if len(current) != len(shape):
        raise BuildError(f"--input_shape={name}:{','.join(map(str, shape))} has {len(shape)} dims but "
                         f"{source}'s input is {name}{current}")
    for axis, (have, want) in enumerate(zip(current, shape)):
        if axis > 0 and isinstance(have, int) and have != want:
            raise BuildError(f"--input_shape={name}:{','.join(map(str, shape))} does not match {source}'s "
                             f"input {name}{current} (only the batch may change)")
    batch_param = current[0] if isinstance(current[0], str) else None
    for dim, size in zip(value_info.type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    for output in graph.output:
        first = output.type.tensor_type.shape.dim[0] if output.type.tensor_type.shape.dim else None
        if first is not None and (first.dim_param == batch_param or not first.HasField("dim_value")):
            first.Clear()
            first.dim_value = shape[0]
    del graph.value_info[:]  # recomputed for the new batch
    model.CopyFrom(onnx.shape_inference.infer_shapes(model))


class _BinCalibrationReader:
    """Feeds ``.bin`` files to ONNX Runtime's calibrator in batches of the model's static batch."""

    def __init__(self, files: list[Path], input_name: str, shape: list[int]):
        self.batches = [files[i:i + shape[0]] for i in range(0, len(files), shape[0])]
        self.input_name, self.shape = input_name, shape
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        files = self.batches[self.position]
        self.position += 1
        batch = np.zeros(self.shape, dtype=np.float32)
        for index, path in enumerate(files):
            batch[index] = read_bin(path, self.shape[1:])
        return {self.input_name: batch}


def _quantize_int8(model: onnx.ModelProto, options: BuildOptions, name: str, shape: list[int],
                   workdir: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not options.calib_dir:
        raise BuildError("--precision=int8 needs --calib_dir=<folder of .bin files> (e.g. ./prep_bin) to "
                         "calibrate the activation ranges")
    calib = Path(options.calib_dir)
    if not calib.is_dir():
        raise BuildError(f"--calib_dir={options.calib_dir}: no such folder")
    files = sorted(calib.glob("*.bin"))[:options.calib_count]
    if not files:
        raise BuildError(f"--calib_dir={options.calib_dir}: no .bin files (run preprocess_se_resnext50_32x4d_pth.py)")
    fp32_path, pre_path, int8_path = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    if onnx_opset(model) < 13:  # per-channel QuantizeLinear/DequantizeLinear (their axis) need opset 13
        model = onnx.version_converter.convert_version(model, 13)
    onnx.save(model, fp32_path)
    quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
    quantize_static(str(pre_path), str(int8_path), _BinCalibrationReader(files, name, shape),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return onnx.load(int8_path)


def _optimize(model: onnx.ModelProto, options: BuildOptions, workdir: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    provider = TARGET_PROVIDERS[options.target]
    if provider not in ort.get_available_providers():
        raise BuildError(f"--target={options.target}: this ONNX Runtime has no {provider} (it has "
                         f"{', '.join(ort.get_available_providers())})")
    source, optimized = workdir / "source.onnx", workdir / "optimized.onnx"
    onnx.save(model, source)
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                       OPTIMIZATION_LEVELS[options.optimization])
    session_options.optimized_model_filepath = str(optimized)
    _session(str(source), options.target, session_options)
    return onnx.load(optimized)


def _session(model: str | bytes, target: str, session_options=None):
    """An ONNX Runtime session on ``--target``'s provider, refused when ONNX Runtime falls back to another one
    (it lists CUDA even where CUDA's libraries are missing: :func:`seresnext.runner.provider_problem`). CUDA runs
    with TF32 off (:data:`seresnext.runner.CUDA_OPTIONS`), so that verification keeps float32's tolerance."""
    import onnxruntime as ort

    provider = TARGET_PROVIDERS[target]
    providers = [(provider, dict(CUDA_OPTIONS))] if target == "cuda" else [provider]
    session = ort.InferenceSession(model, session_options, providers=providers)
    problem = provider_problem(session, provider)
    if problem:
        raise BuildError(f"--target={target}: {problem}; nothing was written")
    return session


def _run(model_bytes: bytes, feed: np.ndarray, target: str) -> np.ndarray:
    session = _session(model_bytes, target)
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def build(options: BuildOptions, log=print) -> dict:
    """Build ``options.output + '.onnx'``; returns the metadata recorded in it."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # no warnings about initializers the optimizer removes
    started = time.perf_counter()
    source = options.model
    if not Path(source).is_file():
        raise BuildError(f"--model={source}: no such file")
    if options.precision not in ("fp32", "int8"):
        raise BuildError(f"--precision={options.precision}: expected fp32 or int8")
    if options.target not in TARGET_PROVIDERS:
        raise BuildError(f"--target={options.target}: expected {' or '.join(TARGET_PROVIDERS)}")
    if options.optimization not in OPTIMIZATION_LEVELS:
        raise BuildError(f"--optimization={options.optimization}: expected {', '.join(OPTIMIZATION_LEVELS)}")
    if options.regroup and (options.precision != "fp32" or options.target != "cpu"):
        raise BuildError(f"--regroup: only for fp32 on the CPU (got --precision={options.precision} "
                         f"--target={options.target})")
    try:
        model = onnx.load(source)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise BuildError(f"--model={source}: not an ONNX model ({exc.__class__.__name__}: {exc})") from None
    name, shape = parse_input_shape(options.input_shape)
    config = load_aipp_config(options.insert_op_conf) if options.insert_op_conf else None
    _fix_shape(model, name, shape, source)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    out_path = Path(options.output if options.output.endswith(".onnx") else options.output + ".onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_path.parent) as tmp:
        workdir = Path(tmp)
        if options.precision == "int8":
            log(f"build: int8 static quantization, calibrating on {options.calib_dir}")
            model = _quantize_int8(model, options, name, shape, workdir)
        regrouped = 0
        if options.regroup:
            regrouped = regroup_convs(model, nchwc_block_size())
        if config is not None:
            model = insert_aipp(model, config, source)
        model = _optimize(model, options, workdir)

    metadata = {
        "source": Path(source).name, "input_shape": f"{name}:{','.join(map(str, shape))}",
        "precision": options.precision, "target": options.target, "optimization": options.optimization,
        "aipp_config": Path(options.insert_op_conf).name if config else None,
        "soc_version": options.soc_version, "onnxruntime": __import__("onnxruntime").__version__,
        "regrouped_convs": regrouped,
    }
    for entry in list(model.metadata_props):
        if entry.key in (BUILD_METADATA_KEY, AIPP_METADATA_KEY):
            model.metadata_props.remove(entry)
    for key, value in ((BUILD_METADATA_KEY, json.dumps(metadata)),
                       (AIPP_METADATA_KEY, config.to_json() if config else None)):
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    data = model.SerializeToString()

    if options.verify:
        _verify(reference, data, config, shape, options, log)
    atomic_write(out_path, data)
    log(f"build: wrote {out_path} ({len(data) / 1e6:.1f} MB, {options.precision}, input "
        f"{model.graph.input[0].name}{_dims(model.graph.input[0])}, ONNX Runtime {options.optimization} "
        f"optimizations saved{f', {regrouped} grouped conv(s) regrouped' if regrouped else ''}, "
        f"{time.perf_counter() - started:.1f} s)")
    return metadata


def _verify(reference: onnx.ModelProto, built: bytes, config, shape: list[int], options: BuildOptions,
            log) -> None:
    """Run source and build on the same batch: fp32 must match; int8 reports top-1 agreement on the
    first calibration batch (real images: random inputs say nothing about a quantized model)."""
    from .aipp import apply_aipp_reference

    target = options.target  # CUDA runs with TF32 off, so float32's tolerance holds (see _session)
    rng = np.random.default_rng(0)
    if options.precision == "int8":
        if config is not None:
            log("build: int8 with AIPP: measure its top-1 agreement on real images with the runner")
            _run(built, np.zeros(config.input_shape(shape[0]), np.uint8), target)
            return
        files = sorted(Path(options.calib_dir).glob("*.bin"))[:shape[0]]
        feed = _BinCalibrationReader(files, "", shape).get_next()[""]
        expected = _run(reference.SerializeToString(), feed, target)
        actual = _run(built, feed, target)
        agree = float(np.mean(actual.argmax(1) == expected.argmax(1)))
        log(f"build: int8 vs fp32 top-1 agreement on the first {len(files)} calibration images: {agree:.0%}")
        return
    if config is None:
        feed = rng.standard_normal(shape, dtype=np.float32)
        model_input = feed
    else:
        feed = rng.integers(0, 256, size=config.input_shape(shape[0]), dtype=np.uint8)
        model_input = apply_aipp_reference(config, feed)
    expected = _run(reference.SerializeToString(), model_input, target)
    actual = _run(built, feed, target)
    diff = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    if not diff <= 1e-4 * max(1.0, scale):
        raise BuildError(f"the built model disagrees with {options.model}: max abs diff {diff:.3g} "
                         f"(logits up to {scale:.3g}); nothing was written")
    log(f"build: built model vs source on a random batch: max abs diff {diff:.3g}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m seresnext.build", description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="source ONNX model")
    parser.add_argument("--framework", default="5", help="atc's framework id; only 5 (ONNX)")
    parser.add_argument("--output", help="output name; '.onnx' is added (required unless --describe_input)")
    parser.add_argument("--input_format", default="NCHW", help="only NCHW")
    parser.add_argument("--input_shape", help="'name:N,C,H,W', e.g. image:16,3,224,224 (required unless "
                        "--describe_input)")
    parser.add_argument("--insert_op_conf", default=None, help="AIPP config to compile into the model")
    parser.add_argument("--log", default="error", help="accepted for atc compatibility")
    parser.add_argument("--soc_version", default=None, help="recorded; the target is --target")
    parser.add_argument("--precision", default="fp32", help="fp32 (default) or int8")
    parser.add_argument("--calib_dir", default=None, help="int8: folder of .bin files to calibrate on")
    parser.add_argument("--calib_count", type=int, default=64, help="int8: calibration images (default 64)")
    parser.add_argument("--target", default="cpu", help="execution provider the model is optimized for: "
                        "cpu (default) or cuda")
    parser.add_argument("--optimization", default="extended", help="saved ONNX Runtime optimization level: "
                        "extended (default: for --target's provider), basic (any provider) or all (also the "
                        "layout changes, only for CPUs like this one)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the check against the source model")
    parser.add_argument("--regroup", action="store_true",
                        help="fp32 on the CPU: merge grouped convolutions' small groups into NCHWc-sized ones "
                             "(see regroup_convs; off by default)")
    describe = parser.add_argument_group("--describe_input: print atc's --input_shape for --model and exit")
    describe.add_argument("--describe_input", action="store_true",
                          help="print 'name:N,C,H,W' (name and C,H,W from the graph) and build nothing")
    describe.add_argument("--batch_size", type=int, default=16, help="N (default 16)")
    describe.add_argument("--image_size", type=int, default=None,
                          help="H and W where the graph leaves them dynamic (default 224); must match static ones")
    describe.add_argument("--input_name", default=None, help="the input name expected (default: the graph's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.describe_input:
        if args.batch_size < 1 or (args.image_size is not None and args.image_size < 1):
            raise BuildError("--batch_size and --image_size must be positive")
        print(describe_input(args.model, args.batch_size, args.image_size, args.input_name))
        return 0
    for name in ("output", "input_shape"):
        if not getattr(args, name):
            raise BuildError(f"--{name} is required")
    if str(args.framework) != "5":
        raise BuildError(f"--framework={args.framework}: only 5 (ONNX) is supported")
    if args.input_format != "NCHW":
        raise BuildError(f"--input_format={args.input_format}: only NCHW is supported")
    if args.calib_count < 1:
        raise BuildError(f"--calib_count={args.calib_count}: must be at least 1")
    build(BuildOptions(model=args.model, output=args.output, input_shape=args.input_shape,
                       insert_op_conf=args.insert_op_conf, precision=args.precision, calib_dir=args.calib_dir,
                       calib_count=args.calib_count, target=args.target, optimization=args.optimization,
                       verify=args.verify, soc_version=args.soc_version, regroup=args.regroup))
    return 0


if __name__ == "__main__":
    from .cli import run_main
    sys.exit(run_main(main, "seresnext.build"))
