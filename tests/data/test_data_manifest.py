"""meta.json read/write and name-based mask pairing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medzsad.data.errors import DataError
from medzsad.data.manifest import Record, mask_stem, pair_masks_by_name, read_manifest, write_manifest

OFFICIAL = {
    "train": {},
    "test": {
        "bottle": [
            {"img_path": "bottle/test/good/000.png", "mask_path": "", "cls_name": "bottle",
             "specie_name": "good", "anomaly": 0},
            {"img_path": "bottle/test/broken_large/000.png",
             "mask_path": "bottle/ground_truth/broken_large/000_mask.png", "cls_name": "bottle",
             "specie_name": "broken_large", "anomaly": 1},
        ],
        "brain": [
            {"img_path": "/abs/BrainMRI/brain_tumor_dataset/no/1 no.jpeg", "cls_name": "brain",
             "mask_path": "", "specie_name": "no", "anomaly": 0},
        ],
    },
}  # fmt: skip


def test_existing_manifest_round_trips_unchanged(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(OFFICIAL, indent=4) + "\n")
    manifest = read_manifest(path)
    assert manifest.root == tmp_path
    assert manifest.counts()["bottle"] == {"normal": 1, "anomalous": 1, "with_mask": 1}
    assert manifest.resolve("bottle/test/good/000.png") == tmp_path / "bottle/test/good/000.png"
    assert manifest.resolve("/abs/x.png") == Path("/abs/x.png")
    write_manifest(manifest, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == OFFICIAL


def test_medzsad_keys_and_unknown_keys_survive(tmp_path):
    item = {"img_path": "v.nii.gz", "mask_path": "l.nii.gz", "cls_name": "brain", "specie_name": "lesion",
            "anomaly": 1, "slice_index": 7, "slice_axis": "axial", "note": "kept"}  # fmt: skip
    record = Record.from_json(item)
    assert record.slice_index == 7 and record.extra == {"note": "kept"}
    assert record.to_json() == item


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not a valid JSON manifest"),
        ('{"val": {}}', "'train' and/or 'test'"),
        ('{"test": {"a": [{"img_path": "x.png", "cls_name": "a", "anomaly": 3}]}}', "anomaly must be 0 or 1"),
        ('{"test": {"a": [{"mask_path": ""}]}}', "record lacks"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path, text, match):
    path = tmp_path / "meta.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_manifest(path)


def test_mask_stems_across_datasets():
    assert mask_stem("000_mask.png") == "000"
    assert mask_stem("ISIC_0000003_Segmentation.png") == "isic_0000003"
    assert mask_stem("case1_label.nii.gz") == "case1"
    assert mask_stem("12.png") == "12"


def test_pairing_is_by_name_not_sort_order():
    images = [Path(n) for n in ("1.png", "2.png", "10.png")]
    # Sorted, the masks would pair 1<->1, 2<->10, 10<->2 ("10" sorts before "2" as text).
    masks = [Path(n) for n in ("1.png", "10.png", "2.png")]
    pairs = pair_masks_by_name(images, masks)
    assert {i.name: m.name for i, m in pairs.items()} == {"1.png": "1.png", "2.png": "2.png", "10.png": "10.png"}
    with pytest.raises(DataError, match="no mask with a matching name for 1 image"):
        pair_masks_by_name([*images, Path("3.png")], masks)
    with pytest.raises(DataError, match="both match"):
        pair_masks_by_name(images, [*masks, Path("1_mask.png")])
    assert pair_masks_by_name([Path("3.png")], masks, strict=False) == {Path("3.png"): None}
