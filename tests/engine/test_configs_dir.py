"""Every shipped config validates, and its method defaults agree with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from medzsad.engine.config import load_config, method_config_for

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.method == path.stem
    method_config_for(config)  # the method's own checks pass
