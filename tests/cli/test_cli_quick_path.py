"""README's quick path, run as a user pastes it, on generated files without weights; its output is not a
terminal, so it must carry progress lines, and every command must end naming what it wrote."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medzsad.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"
CONFIGS = README.parent / "configs"


def quick_path_commands() -> list[list[str]]:
    """The ``medzsad ...`` code spans of README's quick-path line, as argument lists."""
    line = next(line for line in README.read_text().splitlines() if line.startswith("Quick path"))
    assert "backbone=tiny" in line
    return [shlex.split(span)[1:] for span in re.findall(r"`(medzsad [^`]+)`", line)]


def write_scans(root: Path) -> None:
    """Grey PNGs in good/ and lesion/ (a bright square), masks in masks/ paired by name."""
    rng = np.random.default_rng(0)
    for specie in ("good", "lesion"):
        (root / specie).mkdir(parents=True)
        for i in range(3):
            image = rng.normal(100, 10, (48, 48)).clip(0, 255).astype(np.uint8)
            if specie == "lesion":
                image[10:20, 12:24] = 250
                (root / "masks").mkdir(exist_ok=True)
                mask = np.zeros((48, 48), np.uint8)
                mask[10:20, 12:24] = 255
                Image.fromarray(mask).save(root / "masks" / f"l{i}.png")
            Image.fromarray(image).save(root / specie / f"{'l' if specie == 'lesion' else 'g'}{i}.png")


def test_readme_quick_path_runs_without_weights_and_announces_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDZSAD_DEVICE", "cpu")
    (tmp_path / "configs").symlink_to(CONFIGS)
    write_scans(tmp_path / "my_scans")
    commands = quick_path_commands()
    assert [c[0] for c in commands] == ["predict", "prepare", "test"]

    outputs = {}
    for argv in commands:
        assert main(argv) == 0, argv
        outputs[argv[0]] = capsys.readouterr()

    predicted = outputs["predict"]
    images = len(list((tmp_path / "my_scans").rglob("*.png")))  # -i takes every image under the folder
    assert re.search(rf"wrote {images} image\(s\) and 0 volume\(s\) to predictions: .*maps/.*overlays/", predicted.out)
    assert "volumes/" not in predicted.out.splitlines()[-1]  # only folders that exist are named
    assert (tmp_path / "predictions" / "scores.csv").is_file()

    test = outputs["test"]
    # Not a terminal (pytest captures the streams): plain progress lines instead of a hidden bar.
    progress_lines = [line for line in test.err.splitlines() if line.startswith("test mine:")]
    assert progress_lines and re.search(r"test mine: 1/\d+ \(\d+%\) [\d.]+ (it/s|s/it)", progress_lines[0])
    assert progress_lines[-1].startswith("test mine: done ")
    run_line = next(line for line in test.out.splitlines() if line.startswith("MLflow: zero-shot-eval on mine"))
    assert re.search(r"logged as run [0-9a-f]{32}$", run_line)
    assert re.search(r"wrote to runs/clip-test: .*metrics\.csv.*scores_mine\.csv", test.out)
    assert f"MLflow store: {tmp_path / 'mlflow.db'}" in test.out
    assert test.out.rstrip().endswith(f"next: medzsad ui --store {tmp_path}")
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "runs" / "clip-test" / "metrics.csv").is_file()
