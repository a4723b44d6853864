"""Upstream entry point: ``from senet import se_resnext50_32x4d`` keeps working.

The one model definition lives in ``seresnext.model``.
"""
from seresnext.model import SENet, SEModule, SEResNeXtBottleneck, se_resnext50_32x4d  # noqa: F401

__all__ = ["SENet", "SEModule", "SEResNeXtBottleneck", "se_resnext50_32x4d"]
