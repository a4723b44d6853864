"""seresnext50_pth2onnx.py / pthtar2onnx.py: opset 11, upstream names, ONNX Runtime == torch, no network."""
import collections
import runpy
import socket
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import pthtar2onnx
import seresnext50_pth2onnx
from offline_helpers import ROOT, calibrated_model, run_tool
from seresnext.export import ExportError, export_onnx

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the export tried to open a network connection")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _dims(value_info):
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_cadene_weights_export_opset11_dynamic_batch_matching_torch(tmp_path):
    model = calibrated_model(num_classes=1000, image_size=64)  # BN statistics; the export is at 224
    torch.save(model.state_dict(), tmp_path / "se_resnext50_32x4d-a260b3a4.pth")
    status, out, err = run_tool(seresnext50_pth2onnx, [tmp_path / "se_resnext50_32x4d-a260b3a4.pth",
                                                       tmp_path / "se_resnext50_32x4d.onnx"])
    assert status == 0, err
    assert "opset 11" in out and "onnx checker ok" in out
    proto = onnx.load(tmp_path / "se_resnext50_32x4d.onnx")
    assert {o.domain: o.version for o in proto.opset_import}[""] == 11
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["class"]
    assert _dims(proto.graph.input[0]) == ["-1", 3, 224, 224]
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["Conv"] == 85 and ops["Gemm"] == 1 and "MatMul" not in ops  # every convolution stays a Conv
    batch = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(batch).numpy()
    session = ort.InferenceSession(str(tmp_path / "se_resnext50_32x4d.onnx"), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"image": batch.numpy()})[0]
    assert np.abs(expected).max() > 1.0  # a model whose logits mean something
    assert np.abs(actual - expected).max() < 1e-4


def test_pthtar2onx_spelling_with_upstream_defaults_from_a_ddp_checkpoint(tmp_path, monkeypatch, capsys):
    """The seed README's ``python pthtar2onx.py``: ./model_best.pth.tar -> se_resnext50_gpu8p.onnx."""
    monkeypatch.chdir(tmp_path)
    model = calibrated_model(num_classes=10, image_size=64)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 7,
                "best_acc1": 55.5, "args": {"image_size": 64}, "classes": [f"n{i:08d}" for i in range(10)],
                "class_names": [f"shape {i}" for i in range(10)]}, "model_best.pth.tar")
    monkeypatch.setattr(sys, "argv", ["pthtar2onx.py"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "pthtar2onx.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "pthtar2onx.py: ./model_best.pth.tar (10 classes, epoch 7)" in out
    proto = onnx.load("se_resnext50_gpu8p.onnx")
    assert {o.domain: o.version for o in proto.opset_import}[""] == 11
    assert [i.name for i in proto.graph.input] == ["actual_input_1"]
    assert [o.name for o in proto.graph.output] == ["output1"]
    assert _dims(proto.graph.input[0]) == [16, 3, 64, 64] and _dims(proto.graph.output[0]) == [16, 10]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["seresnext.num_classes"] == "10" and "shape 3" in meta["seresnext.class_names"]
    batch = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(batch).numpy()
    actual = ort.InferenceSession("se_resnext50_gpu8p.onnx", providers=["CPUExecutionProvider"]).run(
        None, {"actual_input_1": batch.numpy()})[0]
    assert np.abs(actual - expected).max() < 1e-4


def _small_net(classes: int = 3) -> torch.nn.Module:
    """Any NCHW classifier exports the same way; a small one keeps these failure tests fast."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, classes)).eval()


def test_a_disagreeing_export_fails_loudly_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="ONNX Runtime and torch disagree"):
        export_onnx(_small_net(), tmp_path / "m.onnx", input_name="image", output_name="class", batch_size=None,
                    image_size=32, atol=-1.0)
    assert not (tmp_path / "m.onnx").exists()


def test_an_export_in_another_opset_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    real = onnx.load_from_string

    def as_opset18(data):  # what torch 2.14's default (dynamo) exporter silently does
        proto = real(data)
        proto.opset_import[0].version = 18
        return proto
    monkeypatch.setattr("seresnext.export.onnx.load_from_string", as_opset18)
    with pytest.raises(ExportError, match="wrote opset 18, not the requested 11"):
        export_onnx(_small_net(), tmp_path / "m.onnx", input_name="image", output_name="class", batch_size=None,
                    image_size=32)
    assert not (tmp_path / "m.onnx").exists()


def test_bad_checkpoints_are_clear_errors(tmp_path):
    status, _, err = run_tool(pthtar2onnx, [tmp_path / "nope.pth.tar", tmp_path / "x.onnx"])
    assert status == 1 and "nope.pth.tar: no such file" in err
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth.tar")
    status, _, err = run_tool(pthtar2onnx, [tmp_path / "other.pth.tar", tmp_path / "x.onnx"])
    assert status == 1 and "no 'last_linear.weight'" in err
    (tmp_path / "junk.pth").write_bytes(b"junk")
    status, _, err = run_tool(seresnext50_pth2onnx, [tmp_path / "junk.pth", tmp_path / "x.onnx"])
    assert status == 1 and "junk.pth" in err
