from __future__ import annotations

from pathlib import Path

# Imported now, not by its plugin's end-of-run summary: CPython 3.11.7's ast.parse can
# fail with "AST constructor recursion depth mismatch" when pytest rewrites a module
# that late in a run (seen after the MCP client's tests).
import hypothesis  # noqa: F401
import pytest

from fabric.events.catalogue import Catalogue
from fabric.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue.load(ROOT / "fabric" / "schemas")


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()
