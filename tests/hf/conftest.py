"""Session cache of the tiny models of hf_tiny."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from hf_tiny import make_model  # noqa: E402


@pytest.fixture(scope="session")
def models():
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = make_model(family)
        return cache[family]

    return get
