"""Build a ``meta.json`` manifest from the raw download layout of each benchmark dataset.

Every ``prepare_<name>(raw_root, out_manifest=None, ...)`` scans ``raw_root``, writes the manifest
(default ``raw_root/meta.json``; paths inside are relative to the manifest's folder) and returns it.
Differences from the official generators (methods-spec section 6.2), all on purpose:

* masks are paired to images **by name** (``000.png`` <-> ``000_mask.png``), never by sort order; an
  anomalous image without a matching mask is an error where the dataset has masks;
* only the expected folders are read (Br35H's unlabelled ``pred/`` folder is not taken as anomalous);
* paths are written relative to the dataset root, also for the medical sets.

:data:`PREPARERS` maps the CLI names (``medzsad prepare <name> RAW OUT``) to these functions.
"""

from __future__ import annotations

import csv
import inspect
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from medzsad.data.errors import DataError
from medzsad.data.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES, VOLUME_SUFFIXES, is_dicom_file
from medzsad.data.manifest import Manifest, Record, mask_stem, pair_masks_by_name, write_manifest

__all__ = [
    "PREPARERS",
    "prepare",
    "prepare_br35h",
    "prepare_brainmri",
    "prepare_btad",
    "prepare_clinicdb",
    "prepare_colondb",
    "prepare_dtd",
    "prepare_endo",
    "prepare_folder",
    "prepare_headct",
    "prepare_isic",
    "prepare_kvasir",
    "prepare_mpdd",
    "prepare_mvtec",
    "prepare_tn3k",
    "prepare_visa",
    "prepare_volumes",
]

MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
VISA_CLASSES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
_MASK_FOLDERS = ("masks", "mask", "ground_truth", "groundtruth")
_NORMAL_FOLDERS = ("good", "normal", "no", "ok", "healthy")
#: The category of a user's own data when the user names none. Never the folder's name: hospital exports
#: name folders after patients, and the category reaches tables, file names and MLflow.
NEUTRAL_CATEGORY = "category-1"


# -------------------------------------------------------------------------------------------- helpers


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; hidden files and non-images skipped."""
    if not folder.is_dir():
        raise DataError(folder, "expected folder is missing")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and (p.name.lower().endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES) or is_dicom_file(p))
    )


def _existing_folder(raw_root: str | Path) -> Path:
    """``raw_root`` as a path, or one line saying it is missing or not a folder."""
    root = Path(raw_root)
    if not root.exists():
        raise DataError(root, "folder not found")
    if not root.is_dir():
        raise DataError(root, "is a file; give the folder that holds the dataset")
    return root


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _finish(manifest: Manifest, raw_root: Path, out_manifest: str | Path | None) -> Manifest:
    out = Path(out_manifest) if out_manifest is not None else raw_root / "meta.json"
    if out.is_dir():
        out = out / "meta.json"
    if not any(manifest.splits[s] for s in manifest.splits):
        raise DataError(raw_root, "no images found in the expected layout")
    # Paths were collected absolute; make them relative to the manifest's folder.
    base = out.parent
    base.mkdir(parents=True, exist_ok=True)
    for classes in manifest.splits.values():
        for records in classes.values():
            for r in records:
                r.img_path = _rel(Path(r.img_path), base)
                r.mask_path = _rel(Path(r.mask_path), base) if r.mask_path else ""
    manifest.root = base
    write_manifest(manifest, out)
    return manifest


def _record(image: Path, mask: Path | None, cls_name: str, specie: str, anomaly: int, **extra: Any) -> Record:
    return Record(str(image), str(mask) if mask else "", cls_name, specie, int(anomaly), **extra)


def _mvtec_layout(
    raw_root: str | Path,
    out_manifest: str | Path | None,
    *,
    normal: Sequence[str],
    categories: Iterable[str] | None,
    mask_dir: str = "ground_truth",
) -> Manifest:
    """``<cls>/{train,test}/<specie>/*`` with masks in ``<cls>/<mask_dir>/<specie>/`` (MVTec, BTAD, ...)."""
    raw_root = Path(raw_root)
    wanted = None if categories is None else set(categories)
    manifest = Manifest()
    classes = [d for d in _subdirs(raw_root) if (d / "test").is_dir() or (d / "train").is_dir()]
    if wanted is not None:
        absent = wanted - {d.name for d in classes}
        if absent:
            raise DataError(raw_root, f"categories not found: {', '.join(sorted(absent))}")
        classes = [d for d in classes if d.name in wanted]
    for cls_dir in classes:
        for phase in ("train", "test"):
            if not (cls_dir / phase).is_dir():
                continue
            for specie_dir in _subdirs(cls_dir / phase):
                specie = specie_dir.name
                images = _images(specie_dir)
                abnormal = specie not in normal
                masks: dict[Path, Path | None] = dict.fromkeys(images)
                if abnormal:
                    gt = cls_dir / mask_dir / specie
                    if not gt.is_dir():
                        raise DataError(gt, f"mask folder for defect type {specie!r} is missing")
                    masks = pair_masks_by_name(images, _images(gt), where=gt)
                for image in images:
                    manifest.add(phase, _record(image, masks[image], cls_dir.name, specie, abnormal))
    return _finish(manifest, raw_root, out_manifest)


# ------------------------------------------------------------------------------------ industrial sets


def prepare_mvtec(
    raw_root: str | Path, out_manifest: str | Path | None = None, *, categories: Iterable[str] | None = None
) -> Manifest:
    """MVTec AD: ``<cls>/{train,test}/<specie>/NNN.png``, masks ``<cls>/ground_truth/<specie>/NNN_mask.png``."""
    return _mvtec_layout(raw_root, out_manifest, normal=("good",), categories=categories)


def prepare_mpdd(
    raw_root: str | Path, out_manifest: str | Path | None = None, *, categories: Iterable[str] | None = None
) -> Manifest:
    """MPDD: the MVTec layout (``bracket_black``, ..., ``tubes``), normal folder ``good``."""
    return _mvtec_layout(raw_root, out_manifest, normal=("good",), categories=categories)


def prepare_btad(
    raw_root: str | Path, out_manifest: str | Path | None = None, *, categories: Iterable[str] | None = None
) -> Manifest:
    """BTAD: ``01|02|03/{train/ok, test/{ok,ko}}``, masks ``<cls>/ground_truth/ko/NNNN.png`` (images .bmp/.png)."""
    return _mvtec_layout(raw_root, out_manifest, normal=("ok",), categories=categories)


def prepare_dtd(
    raw_root: str | Path, out_manifest: str | Path | None = None, *, categories: Iterable[str] | None = None
) -> Manifest:
    """DTD-Synthetic: ``<Texture_NNN>/{train/good, test/{good,bad}}``, masks ``ground_truth/bad/``."""
    return _mvtec_layout(raw_root, out_manifest, normal=("good",), categories=categories)


def prepare_visa(
    raw_root: str | Path,
    out_manifest: str | Path | None = None,
    *,
    split_csv: str = "split_csv/1cls.csv",
    categories: Iterable[str] | None = None,
) -> Manifest:
    """VisA from ``split_csv/1cls.csv`` (columns object, split, label, image, mask; label normal/anomaly)."""
    raw_root = Path(raw_root)
    table = raw_root / split_csv
    if not table.is_file():
        raise DataError(table, "VisA split file not found (expected split_csv/1cls.csv under the root)")
    wanted = None if categories is None else set(categories)
    manifest = Manifest()
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"object", "split", "label", "image", "mask"}
        if not needed <= set(reader.fieldnames or ()):
            raise DataError(table, f"expected columns {sorted(needed)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            cls_name, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
            if wanted is not None and cls_name not in wanted:
                continue
            if split not in ("train", "test") or label not in ("normal", "anomaly"):
                raise DataError(table, f"line {line}: unexpected split {split!r} or label {label!r}")
            anomalous = label == "anomaly"
            mask = raw_root / row["mask"].strip() if anomalous and row["mask"].strip() else None
            if anomalous and mask is None:
                raise DataError(table, f"line {line}: anomalous image without a mask")
            manifest.add(split, _record(raw_root / row["image"].strip(), mask, cls_name, "", anomalous))
    return _finish(manifest, raw_root, out_manifest)


# --------------------------------------------------------------------------------------- medical sets


def _two_folders(root: Path, normal: str, abnormal: str, cls_name: str) -> Manifest:
    manifest = Manifest()
    for specie, anomaly in ((normal, 0), (abnormal, 1)):
        for image in _images(root / specie):
            manifest.add("test", _record(image, None, cls_name, specie, anomaly))
    return manifest


def prepare_brainmri(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """Brain MRI (Kaggle "Brain MRI Images for Brain Tumor Detection"): ``brain_tumor_dataset/{no,yes}``
    (or ``no``/``yes`` directly under the root); class ``brain``, image labels only."""
    raw_root = Path(raw_root)
    base = raw_root / "brain_tumor_dataset" if (raw_root / "brain_tumor_dataset").is_dir() else raw_root
    return _finish(_two_folders(base, "no", "yes", "brain"), raw_root, out_manifest)


def prepare_br35h(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """Br35H: ``{no,yes}/`` under the root (the unlabelled ``pred/`` folder is ignored); class ``brain``."""
    raw_root = Path(raw_root)
    return _finish(_two_folders(raw_root, "no", "yes", "brain"), raw_root, out_manifest)


def prepare_headct(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """Head CT (hemorrhage), class ``brain``, image labels only. Two layouts:

    * the Kaggle download: ``labels.csv`` (``id, hemorrhage``) and ``head_ct/NNN.png`` (possibly nested
      ``head_ct/head_ct/``); species ``good`` / ``hemorrhage``;
    * the AnomalyCLIP layout: ``brain/test/{good,<abnormal>}/``.
    """
    raw_root = Path(raw_root)
    labels = next(iter(sorted(raw_root.rglob("labels.csv"))), None)
    manifest = Manifest()
    if labels is None:
        test = raw_root / "brain" / "test"
        if not test.is_dir():
            raise DataError(raw_root, "neither labels.csv nor brain/test/ found (see prepare_headct docs)")
        for specie_dir in _subdirs(test):
            anomaly = specie_dir.name != "good"
            for image in _images(specie_dir):
                manifest.add("test", _record(image, None, "brain", specie_dir.name, anomaly))
        return _finish(manifest, raw_root, out_manifest)
    candidates = [p for p in raw_root.rglob("*.png") if not p.name.startswith(".")]
    by_id: dict[int, Path] = {}
    for p in candidates:
        if p.stem.isdigit():
            by_id.setdefault(int(p.stem), p)
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]]
    if "id" not in header or "hemorrhage" not in header:
        raise DataError(labels, f"expected columns 'id, hemorrhage', got {rows[0]}")
    col_id, col_label = header.index("id"), header.index("hemorrhage")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        image_id, label = int(row[col_id].strip()), int(row[col_label].strip())
        if image_id not in by_id:
            raise DataError(labels, f"line {line}: no image file for id {image_id}")
        specie = "hemorrhage" if label else "good"
        manifest.add("test", _record(by_id[image_id], None, "brain", specie, label))
    return _finish(manifest, raw_root, out_manifest)


def _images_and_masks(raw_root: Path, image_dir: str, mask_dir: str, cls_name: str) -> Manifest:
    images = _images(raw_root / image_dir)
    pairs = pair_masks_by_name(images, _images(raw_root / mask_dir), where=raw_root / mask_dir)
    manifest = Manifest()
    for image in images:
        manifest.add("test", _record(image, pairs[image], cls_name, "", 1))
    return manifest


def prepare_colondb(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """CVC-ColonDB (PraNet test set): ``images/N.png``, ``masks/N.png``; class ``colon``, all anomalous."""
    raw_root = Path(raw_root)
    return _finish(_images_and_masks(raw_root, "images", "masks", "colon"), raw_root, out_manifest)


def prepare_clinicdb(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """CVC-ClinicDB (PraNet test set): ``images/``, ``masks/``; class ``colon``, all anomalous."""
    raw_root = Path(raw_root)
    return _finish(_images_and_masks(raw_root, "images", "masks", "colon"), raw_root, out_manifest)


def prepare_kvasir(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """Kvasir(-SEG): ``images/<id>.png|jpg``, ``masks/<id>.png|jpg``; class ``colon``, all anomalous."""
    raw_root = Path(raw_root)
    return _finish(_images_and_masks(raw_root, "images", "masks", "colon"), raw_root, out_manifest)


def prepare_tn3k(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """TN3K thyroid ultrasound test set: ``test-image/NNNN.jpg``, ``test-mask/NNNN.jpg``; class ``thyroid``."""
    raw_root = Path(raw_root)
    return _finish(_images_and_masks(raw_root, "test-image", "test-mask", "thyroid"), raw_root, out_manifest)


def prepare_endo(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """EndoTect 2020 segmentation test set: image folders plus ``masks/``; class ``colon``.

    Every folder except ``masks`` is a specie; ``good`` (if present) is normal, the others anomalous,
    with masks from ``masks/`` paired by name.
    """
    raw_root = Path(raw_root)
    mask_files = _images(raw_root / "masks")
    manifest = Manifest()
    for specie_dir in _subdirs(raw_root):
        if specie_dir.name == "masks":
            continue
        images = _images(specie_dir)
        anomalous = specie_dir.name != "good"
        pairs = pair_masks_by_name(images, mask_files, where=raw_root / "masks") if anomalous else {}
        for image in images:
            manifest.add("test", _record(image, pairs.get(image), "colon", specie_dir.name, anomalous))
    return _finish(manifest, raw_root, out_manifest)


def prepare_isic(raw_root: str | Path, out_manifest: str | Path | None = None) -> Manifest:
    """ISIC / ISBI 2016 part 1 test set, class ``skin``. Two layouts:

    * the ISIC download: ``ISBI2016_ISIC_Part1_Test_Data/ISIC_NNNNNNN.jpg`` and
      ``ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_NNNNNNN_Segmentation.png``;
    * the AnomalyCLIP layout: ``skin/test/<specie>/`` with the ground-truth folder under ``skin/``.
    """
    raw_root = Path(raw_root)
    gt_name = "ISBI2016_ISIC_Part1_Test_GroundTruth"
    manifest = Manifest()
    if (raw_root / "ISBI2016_ISIC_Part1_Test_Data").is_dir():
        folders = [(raw_root / "ISBI2016_ISIC_Part1_Test_Data", "")]
        gt = raw_root / gt_name
    elif (raw_root / "skin" / "test").is_dir():
        folders = [(d, d.name) for d in _subdirs(raw_root / "skin" / "test")]
        gt = raw_root / "skin" / gt_name
    else:
        raise DataError(raw_root, "expected ISBI2016_ISIC_Part1_Test_Data/ or skin/test/ (see prepare_isic)")
    masks = _images(gt)
    for folder, specie in folders:
        images = _images(folder)
        anomalous = specie != "good"
        pairs = pair_masks_by_name(images, masks, where=gt) if anomalous else {}
        for image in images:
            manifest.add("test", _record(image, pairs.get(image), "skin", specie, anomalous))
    return _finish(manifest, raw_root, out_manifest)


# ------------------------------------------------------------------------------------ a user's own data


def prepare_folder(
    raw_root: str | Path,
    out_manifest: str | Path | None = None,
    *,
    category: str | None = None,
    normal_names: Sequence[str] = _NORMAL_FOLDERS,
    split: str = "test",
) -> Manifest:
    """A user's own folders: ``<root>/<normal>/`` (``good``, ``normal``, ``no``, ``ok``, ``healthy``) and
    one folder per abnormal type; masks optional, in ``<root>/masks/`` (flat) or
    ``<root>/ground_truth/<type>/``, paired by name. DICOM files are accepted as images.

    Args:
        category: ``cls_name`` (default :data:`NEUTRAL_CATEGORY`; never taken from the folder's name).
    """
    raw_root = _existing_folder(raw_root)
    cls_name = category or NEUTRAL_CATEGORY
    normal = {n.lower() for n in normal_names}
    species = [d for d in _subdirs(raw_root) if d.name.lower() not in _MASK_FOLDERS]
    if not species:
        raise DataError(raw_root, "expected sub-folders: one for normal images and one per abnormal type")
    if not any(d.name.lower() in normal for d in species):
        raise DataError(raw_root, f"no normal folder; name one of {', '.join(sorted(normal))}")
    flat = next((raw_root / m for m in _MASK_FOLDERS if (raw_root / m).is_dir()), None)
    manifest = Manifest()
    for specie_dir in species:
        images = _images(specie_dir)
        anomalous = specie_dir.name.lower() not in normal
        pairs: dict[Path, Path | None] = {}
        if anomalous and flat is not None:
            nested = flat / specie_dir.name
            mask_files = _images(nested) if nested.is_dir() else _images(flat)
            pairs = pair_masks_by_name(images, mask_files, where=flat, strict=False)
        for image in images:
            for frame in _frames(image):
                record = _record(image, pairs.get(image), cls_name, specie_dir.name, anomalous, frame_index=frame)
                manifest.add(split, record)
    return _finish(manifest, raw_root, out_manifest)


def _frames(image: Path) -> list[int | None]:
    """``[None]`` for a plain image; one index per frame for a multi-frame DICOM file."""
    if not (image.name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(image)):
        return [None]
    from medzsad.data.dicom import dcmread

    frames = int(dcmread(image, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    return [None] if frames == 1 else list(range(frames))


def _volume_stem(name: str) -> str:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _pair_volumes(raw_root: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs from ``images/``+``labels/``, ``imagesTr|Ts``+``labelsTr|Ts`` (nnU-Net, the
    ``_0000`` channel suffix dropped) or ``<case>_image.*``/``<case>_label.*`` side by side."""

    def volumes(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))

    for image_dir, label_dir in (("images", "labels"), ("imagesTs", "labelsTs"), ("imagesTr", "labelsTr")):
        if (raw_root / image_dir).is_dir() and (raw_root / label_dir).is_dir():
            labels = {mask_stem(_volume_stem(p.name)): p for p in volumes(raw_root / label_dir)}
            pairs = []
            for image in volumes(raw_root / image_dir):
                stem = _volume_stem(image.name)
                key = mask_stem(stem[:-5] if stem.endswith("_0000") else stem)
                if key not in labels:
                    raise DataError(image, f"no label map with a matching name in {label_dir}/")
                pairs.append((image, labels[key]))
            return pairs
    files = volumes(raw_root)
    labels = {}
    images = []
    for p in files:
        stem = _volume_stem(p.name)
        if stem.lower().endswith(("_label", "_labels", "_mask", "_seg", "_segmentation")):
            labels[mask_stem(stem)] = p
        else:
            images.append(p)
    pairs = []
    for image in images:
        stem = _volume_stem(image.name)
        key = mask_stem(stem[: -len("_image")] if stem.lower().endswith("_image") else stem)
        if key not in labels:
            raise DataError(image, "no label map with a matching name (<case>_label.<ext>)")
        pairs.append((image, labels[key]))
    if not pairs:
        raise DataError(raw_root, "no volumes found (images/ + labels/, or <case>_image/<case>_label files)")
    return pairs


def prepare_volumes(
    raw_root: str | Path,
    out_manifest: str | Path | None = None,
    *,
    category: str | None = None,
    axis: str = "axial",
) -> Manifest:
    """Volumes with label maps -> one record per slice along ``axis``.

    Slices with lesion voxels (label > 0) are anomalous (specie ``lesion``) with the label map as mask;
    the others normal (specie ``good``). Records point at the volume files and carry ``slice_index``
    and ``slice_axis`` (medzsad keys; the official loaders cannot read volumes).
    """
    from medzsad.data.volumes import check_same_grid, read_volume, slice_labels

    raw_root = _existing_folder(raw_root)
    cls_name = category or NEUTRAL_CATEGORY
    manifest = Manifest()
    for image_path, label_path in _pair_volumes(raw_root):
        image = read_volume(image_path)
        label = read_volume(label_path, image=False)
        check_same_grid(image, label, label_path)
        for index, abnormal in enumerate(slice_labels(label, axis)):
            manifest.add(
                "test",
                _record(
                    image_path,
                    label_path,
                    cls_name,
                    "lesion" if abnormal else "good",
                    bool(abnormal),
                    slice_index=index,
                    slice_axis=axis,
                ),
            )
    return _finish(manifest, raw_root, out_manifest)


#: ``medzsad prepare <name> RAW OUT`` -> preparer.
PREPARERS: dict[str, Callable[..., Manifest]] = {
    "mvtec": prepare_mvtec,
    "visa": prepare_visa,
    "btad": prepare_btad,
    "mpdd": prepare_mpdd,
    "dtd": prepare_dtd,
    "brainmri": prepare_brainmri,
    "headct": prepare_headct,
    "br35h": prepare_br35h,
    "colondb": prepare_colondb,
    "clinicdb": prepare_clinicdb,
    "kvasir": prepare_kvasir,
    "endo": prepare_endo,
    "isic": prepare_isic,
    "tn3k": prepare_tn3k,
    "folder": prepare_folder,
    "volumes": prepare_volumes,
}


def prepare(name: str, raw_root: str | Path, out_manifest: str | Path | None = None, **options: str) -> Manifest:
    """Run the preparer ``name`` after checking the folder and the options (``category=`` names the
    category of a user's own data: ``folder`` and ``volumes`` only; benchmarks keep their published names).
    """
    if name not in PREPARERS:
        raise DataError(None, f"unknown dataset {name!r}; known: {', '.join(sorted(PREPARERS))}")
    preparer = PREPARERS[name]
    accepted = {k for k, v in inspect.signature(preparer).parameters.items() if v.kind is v.KEYWORD_ONLY}
    accepted -= {"categories", "normal_names"}  # lists: not settable as one key=value word
    unknown = sorted(set(options) - accepted)
    if unknown:
        allowed = ", ".join(f"{k}=" for k in sorted(accepted)) or "none"
        raise DataError(None, f"prepare {name}: unknown option {unknown[0]}= (options: {allowed})")
    if options.get("category") is not None and not _CATEGORY.match(options["category"]):
        raise DataError(None, f"category={options['category']!r}: use 1-64 letters, digits, '_', '.', '-'")
    return preparer(_existing_folder(raw_root), out_manifest, **options)


_CATEGORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # it names files and MLflow keys
