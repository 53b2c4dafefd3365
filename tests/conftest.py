"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and reuse the cached demo models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def shapes_models():
    from cfx.demo import load_demo

    return load_demo("shapes", progress=False)


@pytest.fixture(scope="session")
def digits_models():
    from cfx.demo import load_demo

    return load_demo("digits", progress=False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


DEMO_FIXTURES = {"shapes_models", "digits_models", "tiny_fitted"}


def pytest_collection_modifyitems(config, items):
    """Every test that uses a demo model (trained on a fresh machine) or a fitted folder (cfx fit trains an
    autoencoder) is slow: the fast lane, -m "not slow", trains nothing."""
    for item in items:
        if DEMO_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
