"""Faults in the middle of a run: what was finished stays on disk, intact; the user reads one line."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import TINY, fingerprint, one_error_line, write_pngs
from PIL import Image

from medzsad.data.datasets import FolderDataset
from medzsad.engine import predict as predict_module


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:]


def _manifest(root: Path, n_good: int = 3, n_bad: int = 3) -> Path:
    """A labelled dataset with masks (official meta.json layout) under ``root``."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n_good + n_bad):
        bad = i >= n_good
        image = root / ("bad" if bad else "good") / f"{i:03d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(image)
        mask = ""
        if bad:
            array = np.zeros((48, 48), np.uint8)
            array[10:20, 10:20] = 255
            mask_path = root / "masks" / f"{i:03d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(mask_path)
            mask = mask_path.relative_to(root).as_posix()
        records.append(
            {"img_path": image.relative_to(root).as_posix(), "mask_path": mask, "cls_name": "skin",
             "specie_name": "bad" if bad else "good", "anomaly": int(bad)}
        )  # fmt: skip
    (root / "meta.json").write_text(json.dumps({"train": {}, "test": {"skin": records}}))
    return root / "meta.json"


# -- predict ---------------------------------------------------------------------------------------


def test_predict_stop_mode_ends_at_the_first_bad_file_and_keeps_the_rows_before(tmp_path, cli):
    write_pngs(tmp_path / "in", 3)
    (tmp_path / "in" / "zz_broken.png").write_text("no image")
    code, _, err = cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", *TINY, "eval.on_error=stop")
    line = one_error_line(err)
    assert code == 2 and "zz_broken.png" in line
    assert len(_rows(tmp_path / "out" / "scores.csv")) == 3  # written as they completed
    assert len(list((tmp_path / "out" / "maps").glob("*.npz"))) == 3


def test_ctrl_c_in_predict_keeps_every_finished_map_with_its_score(tmp_path, cli, monkeypatch):
    write_pngs(tmp_path / "in", 5)
    original = predict_module.Predictor._write_image_outputs
    done = []

    def interrupted(self, *args, **kwargs):
        if len(done) == 3:
            raise KeyboardInterrupt
        original(self, *args, **kwargs)
        done.append(1)

    monkeypatch.setattr(predict_module.Predictor, "_write_image_outputs", interrupted)
    code, _, err = cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", *TINY, "eval.batch_size=1")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    rows = _rows(tmp_path / "out" / "scores.csv")
    maps = {p.stem for p in (tmp_path / "out" / "maps").glob("*.npz")}
    assert len(rows) == 3 and {row.split(",")[0] for row in rows} == maps
    index = _rows(tmp_path / "out" / "sample_index.local.csv")
    assert len(index) == 3


def test_a_decoder_out_of_memory_skips_that_input_only(tmp_path, cli, monkeypatch):
    write_pngs(tmp_path / "in", 3)
    original = FolderDataset.item_samples

    def memory_hungry(self, item):
        if item.source.name == "001.png":
            raise MemoryError
        return original(self, item)

    monkeypatch.setattr(FolderDataset, "item_samples", memory_hungry)
    code, out, _ = cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", *TINY)
    assert code == 1 and "001.png: not enough memory" in out
    assert len(_rows(tmp_path / "out" / "scores.csv")) == 2
    assert "not enough memory" in (tmp_path / "out" / "skipped.csv").read_text()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, to fill for real; skipped where mounting is not permitted."""
    target = tmp_path / "disk"
    target.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a 1 MiB tmpfs here")
    yield target
    subprocess.run(["umount", str(target)], check=False)


def test_a_full_disk_is_one_line_and_the_finished_outputs_stay_intact(tmp_path, small_disk, cli):
    write_pngs(tmp_path / "in", 40, size=160)
    code, _, err = cli("predict", "-i", tmp_path / "in", "-o", small_disk / "out", *TINY, "eval.batch_size=1")
    line = one_error_line(err)
    assert code == 1 and "No space left on device" in line and str(small_disk / "out") in line
    rows = _rows(small_disk / "out" / "scores.csv")
    assert 0 < len(rows) < 40
    complete = [row for row in rows if row.count(",") == 6]
    for row in complete:  # every listed map is there and loads
        with np.load(small_disk / "out" / "maps" / f"{row.split(',')[0]}.npz") as data:
            assert data["anomaly_map"].shape == (160, 160)
    assert not list((small_disk / "out").rglob(".*.tmp*"))  # no half-written file under a final name


# -- test ------------------------------------------------------------------------------------------


def _test(cli, manifest: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("test", *TINY, f"data.test=[skin={manifest}]", f"eval.output_dir={out}", *extra)


def test_test_skips_an_unreadable_image_and_lists_it(tmp_path, cli):
    manifest = _manifest(tmp_path / "d")
    (tmp_path / "d" / "bad" / "004.png").write_bytes(b"\x89PNG broken")
    code, out, err = _test(cli, manifest, tmp_path / "out")
    assert code == 0, err
    lines = [line for line in err.splitlines() if "skipped" in line]
    assert len(lines) == 1 and "004.png" in lines[0]
    assert len(_rows(tmp_path / "out" / "scores_skin.csv")) == 5
    skipped = _rows(tmp_path / "out" / "skipped_skin.csv")
    assert len(skipped) == 1 and "004.png" not in skipped[0] and str(tmp_path) not in skipped[0]
    assert "1 sample(s) skipped" in out and (tmp_path / "out" / "metrics.csv").is_file()


def test_test_skips_a_mask_of_the_wrong_size(tmp_path, cli):
    manifest = _manifest(tmp_path / "d")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "d" / "masks" / "005_mask.png")
    code, _, err = _test(cli, manifest, tmp_path / "out")
    assert code == 0, err
    assert "005_mask.png" in err and "differs from the image size" in err
    assert "differs from the image size" in (tmp_path / "out" / "skipped_skin.csv").read_text()


def test_test_skips_an_image_missing_from_disk(tmp_path, cli):
    manifest = _manifest(tmp_path / "d")
    (tmp_path / "d" / "good" / "001.png").unlink()
    code, _, err = _test(cli, manifest, tmp_path / "out")
    assert code == 0 and "001.png" in err and "does not exist" in err
    assert len(_rows(tmp_path / "out" / "scores_skin.csv")) == 5


def test_test_stop_mode_is_one_line_naming_the_file(tmp_path, cli):
    manifest = _manifest(tmp_path / "d")
    (tmp_path / "d" / "bad" / "004.png").write_bytes(b"\x89PNG broken")
    code, _, err = _test(cli, manifest, tmp_path / "out", "eval.on_error=stop", "eval.num_workers=0")
    line = one_error_line(err)
    assert code == 2 and "004.png" in line


def test_test_stop_mode_with_loader_workers_still_names_the_file(tmp_path, cli):
    manifest = _manifest(tmp_path / "d")
    (tmp_path / "d" / "bad" / "004.png").write_bytes(b"\x89PNG broken")
    code, _, err = _test(cli, manifest, tmp_path / "out", "eval.on_error=stop", "eval.num_workers=1")
    assert code == 2 and "004.png" in one_error_line(err)


def test_a_soft_mask_is_warned_about_once_on_one_line(tmp_path):
    from medzsad.data.readers import read_mask

    folder = tmp_path / "soft"
    folder.mkdir()
    for i in range(3):
        array = np.zeros((16, 16), np.uint8)
        array[4:8, 4:8] = 255
        array[8, 4:8] = 128  # a JPEG-like soft edge
        Image.fromarray(array).save(folder / f"m{i}.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = [read_mask(folder / f"m{i}.png") for i in range(3)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "m0.png" in messages[0] and "not binary" in messages[0]
    assert "\n" not in messages[0] and int(masks[0].sum()) == 20  # the soft edge counts, as warned


def test_a_test_run_into_its_own_folder_again_keeps_the_first_results(tmp_path, cli):
    manifest = _manifest(tmp_path / "d")
    assert _test(cli, manifest, tmp_path / "out")[0] == 0
    before = fingerprint(tmp_path / "out")
    code, _, err = _test(cli, manifest, tmp_path / "out")
    assert code == 2 and "eval.output_dir" in one_error_line(err)
    assert fingerprint(tmp_path / "out") == before
