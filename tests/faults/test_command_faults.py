"""prepare, ui and checkpoint faults: one line naming the folder, file or option; exit status 2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fault_helpers import TINY, one_error_line, write_pngs

from medzsad.engine.checkpoints import save_checkpoint
from medzsad.engine.config import load_config
from medzsad.engine.runtime import build_method


def test_prepare_on_a_missing_folder(tmp_path, cli):
    code, _, err = cli("prepare", "folder", tmp_path / "nowhere")
    line = one_error_line(err)
    assert code == 2 and "nowhere" in line and "folder not found" in line


def test_prepare_of_a_benchmark_on_a_missing_folder(tmp_path, cli):
    code, _, err = cli("prepare", "mvtec", tmp_path / "mvtec_ad")
    assert code == 2 and "mvtec_ad: folder not found" in one_error_line(err)


def test_prepare_on_a_file(tmp_path, cli):
    (tmp_path / "a.zip").write_bytes(b"PK")
    code, _, err = cli("prepare", "folder", tmp_path / "a.zip")
    assert code == 2 and "a.zip" in one_error_line(err)


def test_prepare_unknown_option(tmp_path, cli):
    write_pngs(tmp_path / "d" / "good", 1)
    code, _, err = cli("prepare", "folder", tmp_path / "d", "colour=red")
    assert code == 2 and "colour=" in one_error_line(err)
    assert not (tmp_path / "d" / "meta.json").exists()


def test_prepare_category_that_cannot_name_files(tmp_path, cli):
    write_pngs(tmp_path / "d" / "good", 1)
    code, _, err = cli("prepare", "folder", tmp_path / "d", "category=../x")
    assert code == 2 and "category=" in one_error_line(err)


def test_prepare_folder_names_the_category_as_told_never_from_the_path(tmp_path, cli):
    write_pngs(tmp_path / "DOE_Jane_12345" / "good", 1)
    write_pngs(tmp_path / "DOE_Jane_12345" / "tumour", 1, seed=1)
    assert cli("prepare", "folder", tmp_path / "DOE_Jane_12345")[0] == 0
    text = (tmp_path / "DOE_Jane_12345" / "meta.json").read_text()
    assert '"category-1"' in text and "DOE" not in text
    assert cli("prepare", "folder", tmp_path / "DOE_Jane_12345", "category=brain")[0] == 0
    assert '"brain"' in (tmp_path / "DOE_Jane_12345" / "meta.json").read_text()


def test_prepare_unknown_dataset(tmp_path, cli):
    code, _, err = cli("prepare", "mvtech", tmp_path)
    assert code == 2 and "mvtech" in one_error_line(err)


def test_ui_without_a_store(tmp_path, cli):
    code, _, err = cli("ui", "--store", tmp_path)
    line = one_error_line(err)
    assert code == 2 and "no MLflow store" in line and str(tmp_path) in line


def test_ui_on_a_busy_port(tmp_path, cli):
    (tmp_path / "mlflow.db").write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cli("ui", "--store", tmp_path, "--port", port)
    line = one_error_line(err)
    assert code == 2 and f"port {port}" in line and "in use" in line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real anomalyclip checkpoint on the tiny backbone: ``<stem>.safetensors`` + ``<stem>.json``."""
    method = build_method(load_config(None, [*TINY[:2], *TINY[3:], "method=anomalyclip"]))
    stem = tmp_path_factory.mktemp("ckpt") / "epoch_1"
    save_checkpoint(method, stem)
    return stem


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_corrupt_safetensors_is_one_line_naming_the_file(damage, checkpoint, tmp_path, cli):
    weights = checkpoint.with_suffix(".safetensors")
    data = weights.read_bytes()
    (tmp_path / "c.json").write_bytes(checkpoint.with_suffix(".json").read_bytes())
    bad = data[: len(data) // 2] if damage == "truncated" else bytes(reversed(data))
    (tmp_path / "c.safetensors").write_bytes(bad)
    write_pngs(tmp_path / "in", 1)
    overrides = [*TINY[:2], *TINY[3:], "method=anomalyclip", f"checkpoint={tmp_path / 'c.safetensors'}"]
    code, _, err = cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", *overrides)
    line = one_error_line(err)
    assert code == 2 and "c.safetensors" in line and "truncated or corrupt" in line
