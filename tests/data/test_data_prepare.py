"""Each dataset's raw download layout, built in a temporary folder with the real folder and file names,
through its preparer: counts, labels, and masks paired to the right images (checked from the pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datahelpers import Painter, image_id, mask_id

from medzsad.data.errors import DataError
from medzsad.data.manifest import Manifest, read_manifest
from medzsad.data.prepare import PREPARERS


def check(manifest: Manifest, split: str = "test") -> dict[str, dict[str, int]]:
    """Every record's files exist and every mask belongs to its image; returns the counts."""
    for record in manifest.records(split):
        image = manifest.resolve(record.img_path)
        assert image.is_file(), record.img_path
        assert not Path(record.img_path).is_absolute()
        if record.mask_path:
            mask = manifest.resolve(record.mask_path)
            got, want = mask_id(mask), image_id(image)
            assert want <= got < want + 5, f"{record.img_path} paired with {record.mask_path}"
    return manifest.counts(split)


def run(name: str, root: Path, **kwargs) -> Manifest:
    manifest = PREPARERS[name](root, **kwargs)
    again = read_manifest(root / "meta.json")  # written next to the data by default
    assert again.to_json() == manifest.to_json()
    return manifest


def mvtec_like(
    root: Path,
    cls_name: str,
    normal: str,
    defects: dict[str, int],
    ext: str = "png",
    mask_name: str = "{stem}_mask.png",
    n_train: int = 2,
    n_good: int = 2,
) -> None:
    paint = Painter()
    for i in range(n_train):
        paint.image(root / cls_name / "train" / normal / f"{i:03d}.{ext}")
    for i in range(n_good):
        paint.image(root / cls_name / "test" / normal / f"{i:03d}.{ext}")
    for defect, n in defects.items():
        # Write in reverse so creation order differs from name order.
        for i in reversed(range(n)):
            stem = f"{i:03d}"
            paint.pair(
                root / cls_name / "test" / defect / f"{stem}.{ext}",
                root / cls_name / "ground_truth" / defect / mask_name.format(stem=stem),
            )


def test_mvtec(tmp_path):
    mvtec_like(tmp_path, "bottle", "good", {"broken_large": 3, "contamination": 2})
    mvtec_like(tmp_path, "metal_nut", "good", {"flip": 1})
    (tmp_path / "license.txt").write_text("CC BY-NC-SA 4.0")
    manifest = run("mvtec", tmp_path)
    assert check(manifest) == {
        "bottle": {"normal": 2, "anomalous": 5, "with_mask": 5},
        "metal_nut": {"normal": 2, "anomalous": 1, "with_mask": 1},
    }
    assert check(manifest, "train")["bottle"] == {"normal": 2, "anomalous": 0, "with_mask": 0}
    species = {r.specie_name for r in manifest.records("test", ["bottle"])}
    assert species == {"good", "broken_large", "contamination"}


def test_mvtec_missing_mask_is_an_error(tmp_path):
    mvtec_like(tmp_path, "bottle", "good", {"broken_large": 2})
    (tmp_path / "bottle/ground_truth/broken_large/001_mask.png").unlink()
    with pytest.raises(DataError, match="no mask with a matching name"):
        PREPARERS["mvtec"](tmp_path)


def test_mpdd_and_dtd(tmp_path):
    mvtec_like(tmp_path / "mpdd", "bracket_black", "good", {"hole": 2, "scratches": 1})
    assert check(run("mpdd", tmp_path / "mpdd"))["bracket_black"]["anomalous"] == 3
    mvtec_like(tmp_path / "dtd", "Woven_001", "good", {"bad": 3})
    mvtec_like(tmp_path / "dtd", "Blotchy_099", "good", {"bad": 1})
    assert check(run("dtd", tmp_path / "dtd")) == {
        "Blotchy_099": {"normal": 2, "anomalous": 1, "with_mask": 1},
        "Woven_001": {"normal": 2, "anomalous": 3, "with_mask": 3},
    }


def test_btad(tmp_path):
    mvtec_like(tmp_path, "01", "ok", {"ko": 2}, ext="bmp", mask_name="{stem}.png")
    mvtec_like(tmp_path, "02", "ok", {"ko": 3}, ext="png", mask_name="{stem}.png")
    manifest = run("btad", tmp_path)
    assert check(manifest) == {
        "01": {"normal": 2, "anomalous": 2, "with_mask": 2},
        "02": {"normal": 2, "anomalous": 3, "with_mask": 3},
    }


def test_visa(tmp_path):
    paint = Painter()
    lines = ["object,split,label,image,mask"]
    for cls_name in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{cls_name}/Data/Images/Normal/{i:04d}.JPG"
            paint.image(tmp_path / rel)
            lines.append(f"{cls_name},{'train' if i < 2 else 'test'},normal,{rel},")
        for i in range(2):
            rel, mrel = f"{cls_name}/Data/Images/Anomaly/{i:03d}.JPG", f"{cls_name}/Data/Masks/Anomaly/{i:03d}.png"
            paint.pair(tmp_path / rel, tmp_path / mrel)
            lines.append(f"{cls_name},test,anomaly,{rel},{mrel}")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    manifest = run("visa", tmp_path)
    assert check(manifest)["candle"] == {"normal": 1, "anomalous": 2, "with_mask": 2}
    assert check(manifest, "train")["pcb1"] == {"normal": 2, "anomalous": 0, "with_mask": 0}
    assert {r.specie_name for r in manifest.records()} == {""}


def test_brainmri(tmp_path):
    paint = Painter()
    for name in ("1 no.jpeg", "No12.jpg", "no 3.jpg"):
        paint.image(tmp_path / "brain_tumor_dataset" / "no" / name)
        paint.image(tmp_path / "no" / name)  # the Kaggle zip also has a duplicate top-level copy
    for name in ("Y1.jpg", "Y10.JPG"):
        paint.image(tmp_path / "brain_tumor_dataset" / "yes" / name)
    manifest = run("brainmri", tmp_path)
    assert check(manifest) == {"brain": {"normal": 3, "anomalous": 2, "with_mask": 0}}
    assert all(r.img_path.startswith("brain_tumor_dataset/") for r in manifest.records())


def test_headct_kaggle_layout(tmp_path):
    paint = Painter()
    labels = ["id, hemorrhage"]
    for i in range(6):
        paint.image(tmp_path / "head_ct" / "head_ct" / f"{i:03d}.png", rgb=False)
        labels.append(f"{i}, {int(i < 4)}")
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    manifest = run("headct", tmp_path)
    assert check(manifest) == {"brain": {"normal": 2, "anomalous": 4, "with_mask": 0}}
    assert {r.specie_name for r in manifest.records() if r.anomaly} == {"hemorrhage"}


def test_headct_anomalyclip_layout(tmp_path):
    paint = Painter()
    for specie, n in (("good", 2), ("hemorrhage", 3)):
        for i in range(n):
            paint.image(tmp_path / "brain" / "test" / specie / f"{i:03d}.png")
    assert check(run("headct", tmp_path)) == {"brain": {"normal": 2, "anomalous": 3, "with_mask": 0}}


def test_br35h_ignores_the_unlabelled_pred_folder(tmp_path):
    paint = Painter()
    for i in range(3):
        paint.image(tmp_path / "no" / f"no{i}.jpg")
        paint.image(tmp_path / "yes" / f"y{i}.jpg")
        paint.image(tmp_path / "pred" / f"pred{i}.jpg")
    assert check(run("br35h", tmp_path)) == {"brain": {"normal": 3, "anomalous": 3, "with_mask": 0}}


@pytest.mark.parametrize(
    ("name", "images", "masks", "ext", "cls_name"),
    [
        ("colondb", "images", "masks", "png", "colon"),
        ("clinicdb", "images", "masks", "png", "colon"),
        ("kvasir", "images", "masks", "jpg", "colon"),
        ("tn3k", "test-image", "test-mask", "jpg", "thyroid"),
    ],
)
def test_polyp_and_thyroid_sets(tmp_path, name, images, masks, ext, cls_name):
    paint = Painter()
    stems = (
        ["1", "2", "10", "11", "3"] if name != "kvasir" else ["cju0qkwl35piu0993l0dewei2", "cju0roawvklrq0799vmjorwfv"]
    )
    for stem in stems:
        paint.pair(tmp_path / images / f"{stem}.{ext}", tmp_path / masks / f"{stem}.{ext}")
    manifest = run(name, tmp_path)
    assert check(manifest) == {cls_name: {"normal": 0, "anomalous": len(stems), "with_mask": len(stems)}}


def test_endo(tmp_path):
    paint = Painter()
    for stem in ("a1b2", "c3d4", "e5f6"):
        paint.pair(tmp_path / "images" / f"{stem}.jpg", tmp_path / "masks" / f"{stem}.png")
    assert check(run("endo", tmp_path)) == {"colon": {"normal": 0, "anomalous": 3, "with_mask": 3}}


def test_isic_download_and_anomalyclip_layouts(tmp_path):
    paint = Painter()
    for n in ("0000003", "0000012", "0000004"):
        paint.pair(
            tmp_path / "isic" / "ISBI2016_ISIC_Part1_Test_Data" / f"ISIC_{n}.jpg",
            tmp_path / "isic" / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{n}_Segmentation.png",
        )
        paint.pair(
            tmp_path / "ac" / "skin" / "test" / "anomaly" / f"ISIC_{n}.jpg",
            tmp_path / "ac" / "skin" / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{n}_Segmentation.png",
        )
    for sub in ("isic", "ac"):
        assert check(run("isic", tmp_path / sub)) == {"skin": {"normal": 0, "anomalous": 3, "with_mask": 3}}


def test_generic_folder_with_optional_masks(tmp_path):
    paint = Painter()
    root = tmp_path / "my_scans"
    for i in range(3):
        paint.image(root / "normal" / f"n{i}.png")
    paint.pair(root / "tumour" / "t0.png", root / "masks" / "t0_mask.png")
    paint.image(root / "tumour" / "t1.png")  # no mask for this one: allowed
    manifest = run("folder", root)
    # The category is never the folder's name (exports are named after patients): neutral by default.
    assert check(manifest) == {"category-1": {"normal": 3, "anomalous": 2, "with_mask": 1}}
    with pytest.raises(DataError, match="no normal folder"):
        PREPARERS["folder"](root, normal_names=("healthy",))


def test_out_manifest_elsewhere_keeps_paths_relative_to_it(tmp_path):
    mvtec_like(tmp_path / "raw", "bottle", "good", {"broken_large": 1})
    manifest = PREPARERS["mvtec"](tmp_path / "raw", tmp_path / "out" / "meta.json")
    assert manifest.root == tmp_path / "out"
    assert all(r.img_path.startswith("../raw/") for r in manifest.records())
    check(read_manifest(tmp_path / "out" / "meta.json"))


def test_registry_covers_every_dataset():
    assert set(PREPARERS) == {
        "mvtec", "visa", "btad", "mpdd", "dtd", "brainmri", "headct", "br35h", "colondb", "clinicdb",
        "kvasir", "endo", "isic", "tn3k", "folder", "volumes",
    }  # fmt: skip
