"""``medzsad demo``: the whole toolkit on generated data, in minutes, with no download.

It builds a small auxiliary set (textures with painted defects, MVTec AD layout), a small clinical-style
target set (a head-CT-like phantom as NIfTI volumes and as DICOM slices, with lesion masks, plus the
real NRRD brain/lung/breast scans of ``shared/data`` when they are present), learns AnomalyCLIP prompts
for a few steps on a *tiny random-weight* backbone, evaluates zero-shot on the targets, logs runs to
MLflow (``<workdir>/mlflow.db``) and writes predictions for a DICOM series. The numbers mean nothing:
it is a smoke run that shows every stage working end to end.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medzsad.data.prepare import prepare_folder, prepare_mvtec, prepare_volumes
from medzsad.data.synthetic import (
    make_mvtec_like,
    make_phantom,
    write_dicom_image,
    write_phantom_dicom_series,
    write_phantom_nifti,
)
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config, run_predict, run_train

DEMO_BACKBONE = ["backbone=tiny"]  # the quick-path preset (medzsad.engine.presets): random weights, no download
HU_OFFSET = 1024.0  # DICOM phantoms store HU + 1024 as uint16 with RescaleIntercept -1024


def sample_data_dir() -> Path | None:
    """Real NRRD scans with lesion masks: ``$MEDZSAD_SAMPLE_DATA`` or ``../shared/data/radiomics-samples``."""
    candidates = [os.environ.get("MEDZSAD_SAMPLE_DATA", "")]
    repo = Path(__file__).resolve().parents[2]
    candidates.append(str(repo.parent / "shared" / "data" / "radiomics-samples"))
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*_label.nrrd")):
            return Path(candidate)
    return None


def build_aux_set(root: Path) -> Path:
    make_mvtec_like(root, categories=("weave", "grain"), n_train=0, n_test_good=6, n_test_defect=6, seed=1)
    prepare_mvtec(root, root / "meta.json")
    return root / "meta.json"


def build_nifti_targets(root: Path) -> Path:
    for case, seed in (("case1", 3), ("case2", 4)):
        image, label = make_phantom((12, 48, 40), seed=seed)
        write_phantom_nifti(root / "images" / f"{case}.nii.gz", image)
        write_phantom_nifti(root / "labels" / f"{case}.nii.gz", label.astype(np.uint8))
    prepare_volumes(root, root / "meta.json", category="head_ct")
    return root / "meta.json"


def build_dicom_targets(root: Path) -> Path:
    """Axial phantom slices as single DICOM files in good/ and lesion/ folders, masks as PNG."""
    image, label = make_phantom((12, 48, 40), seed=5)
    for k in range(image.shape[0]):
        lesion = label[k] > 0
        folder = "lesion" if lesion.any() else "good"
        stored = np.clip(np.rint(image[k] + HU_OFFSET), 0, 65535).astype(np.uint16)
        write_dicom_image(
            root / folder / f"slice{k:02d}.dcm", stored, modality="CT", intercept=-HU_OFFSET, seed=f"demo-{k}"
        )
        if lesion.any():
            mask_path = root / "ground_truth" / "lesion" / f"slice{k:02d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lesion.astype(np.uint8) * 255).save(mask_path)
    prepare_folder(root, root / "meta.json", category="head_ct")
    return root / "meta.json"


def build_real_targets(root: Path, source: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("brain*_*.nrrd")):
        shutil.copy2(path, root / path.name)
    prepare_volumes(root, root / "meta.json", category="brain_mri")
    return root / "meta.json"


def run_demo(workdir: Path, steps: int = 4, use_mlflow: bool = True) -> None:
    """Generate data, train, evaluate, predict, log; print what happened and what to run next."""
    start = time.monotonic()
    workdir = workdir.resolve()
    data = workdir / "data"
    print(f"medzsad demo in {workdir}")
    print("  SMOKE RUN: tiny backbone with RANDOM weights on generated data; the numbers mean nothing.")
    aux = build_aux_set(data / "aux-textures")
    targets = [f"phantom_nifti={build_nifti_targets(data / 'phantom-nifti')}"]
    targets.append(f"phantom_dicom={build_dicom_targets(data / 'phantom-dicom')}")
    series = data / "phantom-dicom-series"
    image, _ = make_phantom((12, 48, 40), seed=6)
    write_phantom_dicom_series(series, image, series_seed="demo-series")
    real = sample_data_dir()
    if real is not None:
        targets.append(f"real_brain_mri={build_real_targets(data / 'real-nrrd', real)}")
    print(f"  data: auxiliary textures + {len(targets)} clinical-style target set(s) ({time.monotonic() - start:.0f}s)")

    tracking = [
        f"tracking.enabled={str(use_mlflow).lower()}",
        f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        f"tracking.artifact_location={workdir / 'mlartifacts'}",
        "tracking.deidentified=true",  # generated phantoms: nothing to protect
    ]
    common = [*DEMO_BACKBONE, *tracking, "device=cpu"]
    train_config = load_config(
        None,
        [
            *common,
            f"data.train={aux}",
            f"train.output_dir={workdir / 'runs' / 'train'}",
            "train.epochs=2",
            f"train.max_steps_per_epoch={steps}",
            "train.batch_size=4",
        ],
    )
    result = run_train(train_config)
    checkpoint = f"{result.last_checkpoint}.safetensors"
    print(
        f"  trained: {len(result.history)} epochs, last loss {result.history[-1]['total']:.3f} "
        f"({time.monotonic() - start:.0f}s)"
    )

    test_config = load_config(
        None,
        [
            *common,
            f"checkpoint={checkpoint}",
            f"data.test=[{','.join(targets)}]",
            f"eval.output_dir={workdir / 'runs' / 'test'}",
            "eval.batch_size=16",
        ],
    )
    evaluate_config(test_config)
    predict_config = load_config(None, [*common, f"checkpoint={checkpoint}"])
    summary = run_predict(predict_config, [str(series)], workdir / "predictions")
    print(f"  predictions for a DICOM series: {summary.output_dir}/volumes/ (map volume on the scan's grid)")
    print(f"done in {time.monotonic() - start:.0f}s.\n")
    print("\n".join(next_steps(workdir, checkpoint, use_mlflow)))


def next_steps(workdir: Path, checkpoint: str, use_mlflow: bool) -> list[str]:
    """The demo's "Next" lines: the quick path on one's own files, then real weights, with the paths that
    ``configs/anomalyclip.yaml`` really writes (read from the file when the repository is at hand)."""
    trained = _anomalyclip_checkpoint()
    lines = [
        "Next, on your own images or scans, still without weights (backbone=tiny; scores mean nothing):",
        "  medzsad predict -c configs/clip.yaml backbone=tiny -i YOUR_SCANS/ -o predictions/",
        f"  medzsad test -c configs/anomalyclip.yaml backbone=tiny checkpoint={checkpoint} data.test=[mine=YOUR_DATA/]",
        "With real weights (open_clip downloads them; offline add backbone.weights_path=/models/ViT-L-14-336px.pt):",
        "  medzsad prepare mvtec /data/mvtec_anomaly_detection",
        "  medzsad train -c configs/anomalyclip.yaml data.train=/data/mvtec_anomaly_detection/meta.json",
        f"  medzsad test -c configs/anomalyclip.yaml checkpoint={trained} data.test=[brainmri=/data/BrainMRI/]",
    ]
    if use_mlflow:
        lines.append(f"Review runs, metrics and overlays:  medzsad ui --store {workdir}")
    return lines


def _anomalyclip_checkpoint() -> str:
    """``<train.output_dir>/epoch_<train.epochs>.safetensors`` of ``configs/anomalyclip.yaml``."""
    config_file = Path(__file__).resolve().parents[2] / "configs" / "anomalyclip.yaml"
    train = load_config(config_file if config_file.is_file() else None).train
    return f"{Path(train.output_dir).as_posix()}/epoch_{train.epochs}.safetensors"
