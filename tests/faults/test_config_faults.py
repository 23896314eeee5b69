"""Bad configurations and output locations: one line naming the key, exit status 2, before any work,
and nothing already in the output folder touched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from fault_helpers import TINY, fingerprint, one_error_line, write_pngs


@pytest.fixture
def images(tmp_path) -> Path:
    write_pngs(tmp_path / "in", 2)
    return tmp_path / "in"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.batch_size=-3", "eval.batch_size"),
        ("data.ct_window=[40]", "data.ct_window"),
        ("data.ct_window=[40, 0]", "data.ct_window"),
        ("data.mri_percentiles=[99, 1]", "data.mri_percentiles"),
        ("eval.on_error=ignore", "eval.on_error"),
        ("eval.dice_threshold=2", "eval.dice_threshold"),
        ("eval.batchsize=4", "eval.batchsize"),
        ("eval.batch_size=four", "eval.batch_size"),
        ("device=tpu", "device"),
    ],
)
def test_bad_value_is_one_line_naming_the_key_before_any_work(override, key, images, tmp_path, cli):
    out = tmp_path / "out"
    code, _, err = cli("predict", "-i", images, "-o", out, *TINY, override)
    assert code == 2 and key in one_error_line(err)
    assert not out.exists()  # refused before anything was written


def test_train_batch_size_zero_is_refused(tmp_path, cli):
    code, _, err = cli("train", *TINY, "train.batch_size=0", f"train.output_dir={tmp_path / 't'}")
    assert code == 2 and "train.batch_size" in one_error_line(err)
    assert not (tmp_path / "t").exists()


@pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a cuda:3")
def test_a_gpu_the_machine_lacks_is_refused_before_loading_anything(images, tmp_path, cli):
    code, _, err = cli("predict", "-i", images, "-o", tmp_path / "out", *TINY[:-2], "device=cuda:3")
    line = one_error_line(err)
    assert code == 2 and "device: cuda:3" in line
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(images, tmp_path, cli):
    target = tmp_path / "out"
    target.write_text("my notes")
    code, _, err = cli("predict", "-i", images, "-o", target, *TINY)
    assert code == 2 and "--output" in one_error_line(err) and "is a file" in err
    assert target.read_text() == "my notes"


def test_eval_output_dir_that_is_a_file(tmp_path, cli):
    target = tmp_path / "results.txt"
    target.write_text("keep")
    code, _, err = cli("test", *TINY, f"data.test=[{tmp_path}]", f"eval.output_dir={target}")
    assert code == 2 and "eval.output_dir" in one_error_line(err)
    assert target.read_text() == "keep"


def test_train_output_dir_below_a_file(tmp_path, cli):
    (tmp_path / "f").write_text("x")
    code, _, err = cli("train", *TINY, "method=anomalyclip", "data.train=x", f"train.output_dir={tmp_path / 'f' / 'r'}")
    assert code == 2 and "train.output_dir" in one_error_line(err)


def test_rerun_into_a_folder_with_results_is_refused_and_keeps_them(images, tmp_path, cli):
    out = tmp_path / "out"
    assert cli("predict", "-i", images, "-o", out, *TINY)[0] == 0
    before = fingerprint(out)
    code, _, err = cli("predict", "-i", images, "-o", out, *TINY)
    line = one_error_line(err)
    assert code == 2 and "already holds results" in line and "eval.overwrite=true" in line
    assert fingerprint(out) == before


def test_rerun_with_overwrite_replaces_results_cleanly(images, tmp_path, cli):
    out = tmp_path / "out"
    assert cli("predict", "-i", images, "-o", out, *TINY)[0] == 0
    (out / "maps" / "stale0000000000.npz").write_bytes(b"old run")
    (out / "my_notes.txt").write_text("not a result")
    code, _, err = cli("predict", "-i", images, "-o", out, *TINY, "eval.overwrite=true")
    assert code == 0, err
    assert not (out / "maps" / "stale0000000000.npz").exists()  # no map of the old run mixes in
    assert (out / "my_notes.txt").read_text() == "not a result"  # only results are replaced
    assert len((out / "scores.csv").read_text().splitlines()) == 3


def test_missing_config_file(tmp_path, cli):
    code, _, err = cli("test", "--config", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml" in one_error_line(err)


def test_config_file_that_is_not_yaml(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: [unclosed\n")
    code, _, err = cli("test", "--config", bad)
    assert code == 2 and "bad.yaml" in one_error_line(err)


def _mount_tmpfs(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return result.returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (refuses root too); skipped where mounting is not permitted."""
    target = tmp_path / "ro"
    if os.geteuid() != 0 or not _mount_tmpfs(target, "ro,size=1m"):
        pytest.skip("cannot mount a read-only tmpfs here")
    yield target
    subprocess.run(["umount", str(target)], check=False)


def test_read_only_output_location_is_refused_before_any_work(images, read_only_dir, cli):
    code, _, err = cli("predict", "-i", images, "-o", read_only_dir / "out", *TINY)
    line = one_error_line(err)
    assert code == 2 and "--output" in line and "cannot write" in line


def test_read_only_eval_output_dir_is_refused_before_any_work(read_only_dir, cli):
    code, _, err = cli("test", *TINY, f"data.test=[{read_only_dir}]", f"eval.output_dir={read_only_dir}")
    assert code == 2 and "eval.output_dir" in one_error_line(err)


def test_a_missing_second_dataset_is_refused_before_the_first_is_scored(images, tmp_path, cli):
    code, _, err = cli("test", *TINY, f"data.test=[{images}, {tmp_path / 'gone'}]", f"eval.output_dir={tmp_path / 'o'}")
    line = one_error_line(err)
    assert code == 2 and "data.test[1]" in line and "gone" in line
    assert not list((tmp_path / "o").glob("scores_*.csv"))
