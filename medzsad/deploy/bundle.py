"""A MONAI bundle around an exported ONNX file, and the function its ``inference.json`` runs.

Layout (MONAI bundle specification)::

    <bundle>/configs/inference.json   what ``python -m monai.bundle run`` executes
    <bundle>/configs/metadata.json    versions, task, input and output description
    <bundle>/models/model.onnx        the exported graph (with model.onnx.data for large models)
    <bundle>/docs/README.md           how to run it

``inference.json`` calls :func:`score` with the bundle's model, an input folder/file and an output
folder: the inputs are read and preprocessed by medzsad's data layer with the settings stored in the
ONNX file and scored with onnxruntime, and the outputs (``maps/``, ``overlays/``, ``volumes/``,
``scores.csv``) are those of ``medzsad predict``. The bundle therefore needs medzsad (with its ``onnx``
extra) installed where it runs; the network itself needs no PyTorch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from medzsad.deploy.errors import DeployError
from medzsad.deploy.onnx_runtime import OnnxModel
from medzsad.utils.files import atomic_write_text

INFERENCE_CONFIG = {
    "imports": ["$from medzsad.deploy import bundle as medzsad_bundle"],
    "bundle_root": ".",
    "model_path": "$@bundle_root + '/models/model.onnx'",
    "dataset_dir": "$@bundle_root + '/input'",
    "output_dir": "$@bundle_root + '/eval'",
    "batch_size": 8,
    "run": ["$medzsad_bundle.score(@model_path, @dataset_dir, @output_dir, @batch_size)"],
}

README = """# medzsad {method} bundle

Zero-shot anomaly detection ({method}, exported by medzsad {version}). Scores a folder of images
(PNG/JPEG/TIFF/DICOM), a single image or a volume (NIfTI, NRRD, DICOM series folder) and writes what
`medzsad predict` writes: `maps/<id>.npz` and `overlays/<id>.png` per 2-D image, `volumes/<id>_map.nii.gz`
per volume (on the scan's own grid), `scores.csv`, and `sample_index.local.csv` (maps ids back to
inputs: keep it local, it names files).

    pip install 'medzsad[onnx]'
    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
        --dataset_dir /path/to/scans --output_dir /path/to/out

The network is `models/model.onnx` (input `images` [B, 3, {size}, {size}] float32, CLIP-normalised;
outputs `scores` [B] and `maps` [B, {size}, {size}]); it runs with onnxruntime on the CPU.
Decision thresholds (ONNX metadata): image {image}, pixel {pixel} ({source}).
"""


def write_bundle(onnx_path: str | os.PathLike[str], bundle_dir: str | os.PathLike[str]) -> Path:
    """Build a MONAI bundle folder around an exported file; returns the folder."""
    source = Path(onnx_path)
    model = OnnxModel(source)  # refuses files that are not medzsad exports of this format
    meta = model.metadata
    root = Path(bundle_dir)
    (root / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, root / "models" / "model.onnx")
    data = source.with_name(source.name + ".data")
    if data.is_file():
        shutil.copyfile(data, root / "models" / data.name)
    atomic_write_text(root / "configs" / "inference.json", json.dumps(INFERENCE_CONFIG, indent=2) + "\n")
    atomic_write_text(root / "configs" / "metadata.json", json.dumps(bundle_metadata(meta), indent=2) + "\n")
    thresholds = meta.thresholds
    readme = README.format(
        method=meta.method,
        version=meta.medzsad_version,
        size=meta.image_size,
        image=thresholds.get("image"),
        pixel=thresholds.get("pixel"),
        source=thresholds.get("source", ""),
    )
    atomic_write_text(root / "docs" / "README.md", readme)
    return root


def bundle_metadata(meta) -> dict:
    """``configs/metadata.json``: MONAI's bundle metadata fields for this model."""
    import monai
    import onnxruntime

    size = meta.image_size
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": meta.medzsad_version,
        "changelog": {meta.medzsad_version: "exported by medzsad export"},
        "monai_version": monai.__version__,
        "required_packages_version": {"medzsad": meta.medzsad_version, "onnxruntime": onnxruntime.__version__},
        "name": f"medzsad {meta.method}",
        "task": "zero-shot anomaly detection and localisation",
        "description": f"{meta.method} with prompt-learned CLIP, exported to ONNX by medzsad",
        "authors": "medzsad",
        "copyright": "see the checkpoint's licence",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 3,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": ["CLIP-normalised"],
                    "is_patch_data": False,
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "anomaly map and image score",
                    "num_channels": 1,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                }
            },
        },
    }


def score(model_path: str, inputs: str | list[str], output_dir: str, batch_size: int = 8) -> int:
    """What the bundle runs: ``medzsad predict`` with the ONNX engine; returns the number of failures."""
    from medzsad.deploy.serve import predict_onnx

    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not all(Path(p).exists() for p in paths):
        raise DeployError(f"dataset_dir: {', '.join(str(p) for p in paths if not Path(p).exists())} not found")
    summary = predict_onnx(model_path, paths, Path(output_dir), batch_size)
    print(f"wrote {summary.images} image(s) and {summary.volumes} volume(s) to {summary.output_dir}")
    return len(summary.failures)
