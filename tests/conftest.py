from __future__ import annotations

from pathlib import Path

import pytest

from fabric.settings import Settings, load_settings
from fabric.topics.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.load(ROOT / "schemas")


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()
