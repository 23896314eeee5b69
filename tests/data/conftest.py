"""Fixtures for the data-layer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _id_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed id key, so tests never create the per-user salt file."""
    monkeypatch.setenv("MEDZSAD_ID_SALT", "medzsad-tests")
