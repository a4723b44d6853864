"""The model against Cadene's pretrainedmodels and timm's legacy_seresnext50_32x4d."""
import warnings

import pytest
import torch

from senet import se_resnext50_32x4d
from seresnext.checkpoint import CheckpointError, load_model_weights, save_checkpoint
from seresnext.model import PointwiseConv2d

torch.set_num_threads(2)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights and BatchNorm statistics, so that every layer changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif name.endswith("weight") and tensor.dim() == 1:  # BatchNorm scale
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def ours():
    return randomize(se_resnext50_32x4d(), seed=0)


@pytest.fixture(scope="module")
def references():
    pretrainedmodels = pytest.importorskip("pretrainedmodels")
    timm = pytest.importorskip("timm")
    return {
        "pretrainedmodels": pretrainedmodels.se_resnext50_32x4d(num_classes=1000, pretrained=None).eval(),
        "timm": timm.create_model("legacy_seresnext50_32x4d", pretrained=False).eval(),
    }


def test_state_dict_layout_matches_cadene(ours):
    sd = ours.state_dict()
    assert len(sd) == 384
    assert sum(p.numel() for p in ours.parameters()) == 27_559_896
    for key in ("layer0.conv1.weight", "layer0.bn1.running_var", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer4.2.se_module.fc2.bias", "last_linear.weight"):
        assert key in sd


@pytest.mark.parametrize("name", ["pretrainedmodels", "timm"])
def test_state_dicts_interchange_strictly(ours, references, name):
    ref = references[name]
    ref.load_state_dict(ours.state_dict(), strict=True)
    other = randomize(se_resnext50_32x4d(), seed=1)
    other.load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["pretrainedmodels", "timm"])
@pytest.mark.parametrize("batch", [1, 3])
def test_logits_match_reference(ours, references, name, batch):
    ref = references[name]
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    scale = expected.std()
    assert scale > 0
    diff = ((got - expected).abs().max() / scale).item()
    assert diff < 1e-5, f"{name} batch {batch}: max abs diff {diff:.3g} (logits scaled to unit std)"


def test_other_input_sizes_and_class_counts():
    model = se_resnext50_32x4d(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
        assert model(torch.randn(1, 3, 288, 256)).shape == (1, 7)


def test_pretrained_loads_bare_state_dict_and_ddp_checkpoint(tmp_path, ours):
    bare = tmp_path / "se_resnext50_32x4d-a260b3a4.pth"
    torch.save(ours.state_dict(), bare)
    wrapped = tmp_path / "model_best.pth.tar"
    save_checkpoint({"epoch": 3, "best_acc1": 1.0,
                     "state_dict": {"module." + k: v for k, v in ours.state_dict().items()}}, wrapped)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = ours(x)
        for path in (bare, wrapped):
            got = se_resnext50_32x4d(pretrained=path).eval()(x)
            assert torch.equal(got, expected)


def test_mismatched_weights_name_missing_unexpected_and_misshaped_keys(tmp_path, ours):
    sd = dict(ours.state_dict())
    sd.pop("layer2.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["last_linear.weight"] = torch.zeros(10, 2048)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        se_resnext50_32x4d(pretrained=path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys: layer2.0.conv1.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "last_linear.weight (file (10, 2048), model (1000, 2048))" in message


def test_fresh_head_skips_last_linear(tmp_path, ours):
    path = tmp_path / "w.pth"
    torch.save(ours.state_dict(), path)
    model = se_resnext50_32x4d(num_classes=5)
    load_model_weights(model, path, skip_prefixes=("last_linear.",))
    assert torch.equal(model.layer0.conv1.weight, ours.layer0.conv1.weight)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("content, expected", [
    ("pickle-with-code", "refused by the weights-only loader"),
    ("not-a-dict", "not a state dict"),
    ("garbage", "not a readable PyTorch weight file"),
])
def test_bad_weight_files_get_one_line_errors(tmp_path, content, expected, capfd):
    path = tmp_path / f"{content}.pth"
    if content == "pickle-with-code":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Payload()}, path)
    elif content == "not-a-dict":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        se_resnext50_32x4d(pretrained=path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)
    assert "code ran" not in capfd.readouterr().out


def test_missing_weight_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        se_resnext50_32x4d(pretrained=tmp_path / "nope.pth")


def test_fresh_model_starts_near_chance_loss():
    """From-scratch training needs a sane init: the first loss is about ln(classes), not tens."""
    torch.manual_seed(0)
    model = se_resnext50_32x4d(num_classes=10).train()
    images = torch.randn(16, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(model(images), torch.randint(0, 10, (16,)))
    assert abs(loss.item() - torch.log(torch.tensor(10.0)).item()) < 0.5


@pytest.mark.parametrize("stride,bias", [(1, False), (2, False), (1, True)])
def test_pointwise_matmul_path_computes_the_convolution(stride, bias):
    torch.manual_seed(0)
    pointwise = PointwiseConv2d(48, 80, stride=stride, bias=bias)
    reference = torch.nn.Conv2d(48, 80, kernel_size=1, stride=stride, bias=bias)
    reference.load_state_dict(pointwise.state_dict(), strict=True)
    x = torch.randn(3, 48, 7, 5).contiguous(memory_format=torch.channels_last)  # odd sizes meet stride 2
    assert pointwise.takes_matmul(x)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = pointwise(x_ours), reference(x_ref)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(expected)
    got.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pointwise.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(pointwise.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-5)


def test_pointwise_keeps_the_convolution_for_large_maps_other_layouts_and_tracing():
    pointwise = PointwiseConv2d(16, 32)
    channels_last = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    assert pointwise.takes_matmul(channels_last)
    assert not pointwise.takes_matmul(torch.randn(2, 16, 8, 8))  # NCHW: a matmul would need a copy
    assert not pointwise.takes_matmul(torch.randn(2, 16, 9, 8).contiguous(memory_format=torch.channels_last))
    assert not pointwise.takes_matmul(torch.randn(2, 16, 1, 1))  # an SE gate: either layout, kept exact
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # the check itself must not confuse the tracer
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice
        traced = torch.jit.trace(pointwise, channels_last)
    assert "aten::_convolution" in str(traced.graph) and "aten::linear" not in str(traced.graph)


def test_channels_last_training_step_matches_nchw():
    """At 64x64 the last three stages' 1x1 convolutions take the matmul path; the step must not change."""
    torch.manual_seed(0)
    model = se_resnext50_32x4d(num_classes=10).train()
    images, target = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.zero_grad()
        model.to(memory_format=memory_format)
        loss = torch.nn.functional.cross_entropy(model(images.contiguous(memory_format=memory_format)), target)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_nchw, grads_nchw), (loss_cl, grads_cl) = results
    torch.testing.assert_close(loss_cl, loss_nchw, atol=1e-5, rtol=1e-5)
    for name, grad in grads_nchw.items():
        torch.testing.assert_close(grads_cl[name], grad, atol=1e-4, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
