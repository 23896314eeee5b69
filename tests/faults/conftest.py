"""Fixtures of the fault suite."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medzsad.cli.main import main


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run ``medzsad`` in-process: ``(exit status, stdout, stderr)``."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
