"""The CLI explains itself: help with required keys, config show with sources, prepare's list and
options, the backbone=tiny preset, and answers that come before torch loads."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medzsad.cli.main import build_parser, main
from medzsad.engine.config import ConfigError, load_config
from medzsad.utils.progress import LineProgress, progress

# What a user must give to each command, found independently of the help texts.
REQUIRED = {
    ("predict",): ["--input", "checkpoint="],
    ("test",): ["data.test=", "checkpoint="],
    ("train",): ["data.train="],
    ("finetune",): ["data.train=", "checkpoint="],
    ("table",): ["--run", "data.test="],
    ("prepare",): ["DATASET", "RAW", "category=", "medzsad prepare list"],
    ("tracking", "upload"): ["SPOOL"],
    ("config", "show"): ["--config"],
    ("ui",): ["--store", "5000"],
    ("demo",): ["--workdir"],
}


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_every_subcommand_help_names_its_required_keys(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # every registered subcommand
    covered = {argv[0] for argv in REQUIRED}
    assert set(commands) - {"calibrate"} <= covered, f"commands without a help check: {set(commands) - covered}"
    for argv, keys in REQUIRED.items():
        text = _help(list(argv), capsys)
        for key in keys:
            assert key in text, f"`medzsad {' '.join(argv)} --help` does not name {key}"
        if argv[0] in {"predict", "test", "train", "finetune", "table"}:
            assert "required:" in text and "outputs" in text and "example" in text


def test_startup_answers_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from medzsad.cli.main import main\n"
        "codes = [main(['prepare', 'list']), main(['test', 'train.epochs=ten']), main(['prepare', '--list'])]\n"
        "try:\n"
        "    main(['test', '--help'])\n"
        "except SystemExit as done:\n"
        "    codes.append(done.code)\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[0, 2, 0, 0] False"
    assert "medzsad: error: train.epochs: expected int, got 'ten'" in done.stderr
    assert "mvtec" in done.stdout and "ground_truth" in done.stdout  # names with layouts


def test_backbone_tiny_preset_and_later_keys_win() -> None:
    config = load_config("configs/anomalyclip.yaml", ["backbone=tiny", "backbone.offline=true"])
    assert config.backbone.model_name == "medzsad-tiny-fast" and config.backbone.pretrained is None
    assert config.backbone.offline and config.method_config["image_size"] == 224
    later = load_config("configs/anomalyclip.yaml", ["backbone=tiny", "method_config.image_size=336"])
    assert later.method_config["image_size"] == 336
    with pytest.raises(ConfigError, match="backbone: unknown preset 'huge'; presets: tiny"):
        load_config(None, ["backbone=huge"])


def test_config_show_prints_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "-c", "configs/anomalyclip.yaml", "backbone=tiny", "eval.batch_size=4"]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["backbone.model_name"].endswith("# override backbone=tiny")
    assert "medzsad-tiny-fast" in lines["backbone.model_name"]
    assert lines["eval.batch_size"].endswith("# override eval.batch_size=4")
    assert lines["train.output_dir"].endswith("# file") and "runs/anomalyclip" in lines["train.output_dir"]
    assert lines["device"].endswith("# default")
    assert lines["method_config.temperature"].endswith("# default")  # the method's own defaults are shown


def _own_folder(root: Path, masks_for: int) -> Path:
    rng = np.random.default_rng(0)
    for specie in ("good", "lesion"):
        for i in range(3):
            (root / specie).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / specie / f"{i}.png")
    (root / "masks").mkdir()
    for i in range(masks_for):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "masks" / f"{i}.png")
    return root


def test_prepare_category_warning_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _own_folder(tmp_path / "scans", masks_for=2)
    assert main(["prepare", "folder", str(raw), "category=brain"]) == 0
    out = capsys.readouterr().out
    meta = json.loads((raw / "meta.json").read_text())
    assert set(meta["test"]) == {"brain"}
    assert "warning: anomalous images without a mask (brain: 1)" in out and f"wrote {raw / 'meta.json'}" in out

    (raw / "meta.json").unlink()
    assert main(["prepare", "--strict", "folder", str(raw), "category=brain"]) == 2
    err = capsys.readouterr().err
    assert "--strict: anomalous images without a mask (brain: 1); no manifest written" in err
    assert not (raw / "meta.json").exists() and not list(raw.glob(".*.json"))

    assert main(["prepare", "mvtec", str(raw), "category=x"]) == 2
    assert "category: mvtec keeps its published category names" in capsys.readouterr().err


def test_line_progress_reports_first_step_and_end() -> None:
    stream = io.StringIO()
    bar = progress(range(4), "test demo", stream=stream)  # StringIO is not a terminal
    assert isinstance(bar, LineProgress)
    for _ in bar:
        bar.set_postfix({"total": "0.500"})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("test demo: 1/4 (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("test demo: done 4 in ") and lines[-1].endswith("total=0.500")
    quiet = io.StringIO()
    list(progress(range(3), "rank 1", enabled=False, stream=quiet))
    assert quiet.getvalue() == ""
