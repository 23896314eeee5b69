"""Atomic writes and CSV tables (medzsad.utils)."""

from __future__ import annotations

import csv

import pytest

from medzsad.utils import atomic_path, atomic_write_text, csv_text, write_csv


def test_atomic_path_replaces_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "map.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["map.nii.gz"]


def test_atomic_path_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "scores.csv", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_csv_quotes_names_with_commas_and_quotes(tmp_path):
    name = 'a "b", c'
    path = write_csv(tmp_path / "t.csv", ["category", "score", "empty"], [[name, 0.123456789012, None]])
    rows = list(csv.reader(path.open()))
    assert rows == [["category", "score", "empty"], [name, "0.12345679", ""]]
    assert csv_text(["x"], [[1.5]], float_format=".2f") == "x\n1.50\n"
