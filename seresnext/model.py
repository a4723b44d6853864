"""SE-ResNeXt50_32x4d with Cadene's ``pretrainedmodels`` layout and state-dict keys.

This is the project's one model definition. It reproduces ``pretrainedmodels.models.senet`` so that the
public weight file ``se_resnext50_32x4d-a260b3a4.pth`` loads without renaming. One deliberate change: the
head pools adaptively (upstream used a fixed ``AvgPool2d(7)``), which gives identical numbers at 224x224
and also works at other input sizes.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from os import PathLike

import torch
from torch import nn

__all__ = ["PointwiseConv2d", "SEModule", "SEResNeXtBottleneck", "SENet", "se_resnext50_32x4d",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (``nn.Conv2d``: same weight, same state-dict keys) that runs as one matrix multiply
    on small channels-last CPU feature maps.

    There oneDNN's convolution is several times slower than the same product as a matmul: forward and
    backward of a 1024->2048 1x1 convolution on 32 maps of 2x2 take 35 ms as a convolution and 4.5 ms as
    a matmul (bfloat16). A channels-last tensor already is the (pixels, channels) matrix, so no copy is
    needed. The whole training step runs about 1.5x faster at 64x64 and about 1.15x at 224x224
    (``benchmarks/bench_pointwise.py``). Larger maps, other layouts, other devices, tracing and ONNX export
    keep the convolution, so exported graphs are unchanged. So do 1x1 maps (the SE gates): there the matmul
    gained 3%, within noise, and the convolution keeps an NCHW model's output bit-identical to Cadene's
    (a random-weight network amplifies last-bit differences a thousandfold).
    """

    # Feature maps of at most this many pixels (8x8) take the matmul; measured on a 2-core AVX-512/AMX CPU
    # where 14x14 and larger were equal or slower as a matmul.
    max_matmul_pixels = 64

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=bias)

    def takes_matmul(self, x: torch.Tensor) -> bool:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return False
        return (x.device.type == "cpu" and x.dim() == 4 and 1 < x.shape[-2] * x.shape[-1] <= self.max_matmul_pixels
                and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_matmul(x):
            return super().forward(x)
        stride_h, stride_w = self.stride
        if stride_h > 1 or stride_w > 1:
            x = x[:, :, ::stride_h, ::stride_w]
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels-last
        out = nn.functional.linear(pixels, self.weight.view(self.out_channels, c), self.bias)
        return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)  # channels-last, NCHW-shaped


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = PointwiseConv2d(channels, channels // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = PointwiseConv2d(channels // reduction, channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class SEResNeXtBottleneck(nn.Module):
    """ResNeXt bottleneck (grouped 3x3 carrying the stride) followed by an SE gate."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nn.Module | None = None, base_width: int = 4):
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = PointwiseConv2d(inplanes, width, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = PointwiseConv2d(width, planes * 4, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + residual)


class SENet(nn.Module):
    """Cadene's SENet trunk, restricted to the 7x7-stem configuration SE-ResNeXt uses."""

    def __init__(self, block: type[SEResNeXtBottleneck], layers: list[int], groups: int, reduction: int,
                 dropout_p: float | None = None, inplanes: int = 64, downsample_kernel_size: int = 1,
                 downsample_padding: int = 0, num_classes: int = 1000):
        super().__init__()
        self.inplanes = inplanes
        self.layer0 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, inplanes, kernel_size=7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(inplanes)),
            ("relu1", nn.ReLU(inplace=True)),
            # ceil_mode with padding 0, as Cadene (timm's non-legacy model pads 1 and differs).
            ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        self.layer1 = self._make_layer(block, 64, layers[0], groups, reduction)
        self.layer2 = self._make_layer(block, 128, layers[1], groups, reduction, stride=2,
                                       downsample_kernel_size=downsample_kernel_size,
                                       downsample_padding=downsample_padding)
        self.layer3 = self._make_layer(block, 256, layers[2], groups, reduction, stride=2,
                                       downsample_kernel_size=downsample_kernel_size,
                                       downsample_padding=downsample_padding)
        self.layer4 = self._make_layer(block, 512, layers[3], groups, reduction, stride=2,
                                       downsample_kernel_size=downsample_kernel_size,
                                       downsample_padding=downsample_padding)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_p) if dropout_p is not None else None
        self.last_linear = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Initialisation for training from scratch (Cadene's file had none: it only ever loaded weights).

        He-normal convolutions, unit BatchNorm, a small linear head, and each block's last BatchNorm scale
        at zero so that every residual block starts as the identity (torchvision's ``zero_init_residual``).
        Without it the default init makes the first losses explode (tens for 10 classes).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, SEResNeXtBottleneck):
                nn.init.zeros_(module.bn3.weight)

    def _make_layer(self, block, planes, blocks, groups, reduction, stride=1,
                    downsample_kernel_size=1, downsample_padding=0) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            if downsample_kernel_size == 1 and downsample_padding == 0:
                projection = PointwiseConv2d(self.inplanes, planes * block.expansion, stride=stride, bias=False)
            else:
                projection = nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=downsample_kernel_size,
                                       stride=stride, padding=downsample_padding, bias=False)
            downsample = nn.Sequential(
                projection,
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, groups, reduction, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avg_pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.last_linear(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def se_resnext50_32x4d(num_classes: int = 1000, pretrained: str | PathLike | None = None) -> SENet:
    """Build SE-ResNeXt50_32x4d; ``pretrained`` is a local weight file or training checkpoint, never a URL.

    The model also carries Cadene's metadata (``input_space``, ``input_size``, ``input_range``, ``mean``,
    ``std``) so code written against ``pretrainedmodels`` keeps working.
    """
    model = SENet(SEResNeXtBottleneck, [3, 4, 6, 3], groups=32, reduction=16, dropout_p=None, inplanes=64,
                  downsample_kernel_size=1, downsample_padding=0, num_classes=num_classes)
    model.input_space = "RGB"
    model.input_size = [3, 224, 224]
    model.input_range = [0, 1]
    model.mean = list(IMAGENET_MEAN)
    model.std = list(IMAGENET_STD)
    if pretrained is not None:
        from .checkpoint import load_model_weights
        load_model_weights(model, pretrained)
    return model
