"""demo.py: top-k classes with names and probabilities, from a checkpoint or Cadene's weights, offline."""
import re
import socket

import pytest
import torch

import demo
from offline_helpers import run_tool, write_image
from seresnext.model import se_resnext50_32x4d

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("demo.py tried to open a network connection")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_checkpoint_class_names_and_probabilities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = se_resnext50_32x4d(num_classes=10)
    names = [f"shape number {i}" for i in range(10)]
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 4,
                "args": {"image_size": 64}, "class_names": names}, "model_best.pth.tar")
    image = write_image(tmp_path / "photo.jpg", 120, 90)
    status, out, err = run_tool(demo, [image, "--topk", "3", "--device", "cpu"])
    assert status == 0, err
    assert "model_best.pth.tar (10 classes, epoch 4) on cpu" in out
    rows = re.findall(r"^\s+(\d)\.\s+([\d.]+)%\s+(.+) \((\d+)\)$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert all(name == names[int(index)] for _, _, name, index in rows)
    probabilities = [float(p) for _, p, _, _ in rows]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01


def test_cadene_weights_get_imagenet_names_and_a_sample_image_by_default(tmp_path):
    torch.save(se_resnext50_32x4d().state_dict(), tmp_path / "weights.pth")
    status, out, err = run_tool(demo, ["--checkpoint", tmp_path / "weights.pth", "--topk", "2", "--device", "cpu"])
    assert status == 0, err
    assert "grace_hopper.jpg:" in out  # ships with matplotlib: no download
    from torchvision.models import ResNet50_Weights
    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    rows = re.findall(r"^\s+\d\.\s+[\d.]+%\s+(.+) \((\d+)\)$", out, re.M)
    assert len(rows) == 2 and all(categories[int(index)] == name for name, index in rows)


def test_missing_checkpoint_or_image_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = run_tool(demo, [])
    assert status == 1 and "./model_best.pth.tar: no such file" in err and "main.py" in err
    torch.save({"state_dict": se_resnext50_32x4d(num_classes=3).state_dict()}, "model_best.pth.tar")
    status, _, err = run_tool(demo, [tmp_path / "nope.jpg"])
    assert status == 1 and "nope.jpg: no such image file" in err
    (tmp_path / "text.jpg").write_text("hello")
    status, _, err = run_tool(demo, [tmp_path / "text.jpg", "--device", "cpu"])
    assert status == 1 and "text.jpg: not an image" in err
