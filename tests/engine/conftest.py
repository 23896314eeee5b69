"""Fixtures for the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import write_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("aux"))
