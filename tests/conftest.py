"""Shared test fixtures: locations of the reference data beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_ROOT.parent / "shared"


def _shared_subdir(name: str) -> Path:
    path = SHARED_DIR / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the reference data beside the project is needed for this test")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """`../shared/parity`: fixtures computed by the official code of each method."""
    return _shared_subdir("parity")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """`../shared/data`: real scans with real lesion masks."""
    return _shared_subdir("data")
