"""The deployment jobs: export a method (ONNX and/or MONAI bundle) and predict with onnxruntime."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from medzsad.data.transforms import ClipImageTransform
from medzsad.deploy.bundle import write_bundle
from medzsad.deploy.detector import Detector
from medzsad.deploy.export import ExportResult, export_onnx
from medzsad.engine.predict import PredictSummary
from medzsad.methods.base import ZsadMethod

FORMATS = ("onnx", "bundle", "all")


def export_formats(
    method: ZsadMethod, transform: ClipImageTransform, output_dir: Path, fmt: str = "all"
) -> tuple[ExportResult, Path | None]:
    """``output_dir/model.onnx``, and with ``bundle``/``all`` the bundle ``output_dir/bundle``."""
    result = export_onnx(method, Path(output_dir) / "model.onnx", transform)
    bundle = write_bundle(result.path, Path(output_dir) / "bundle") if fmt in ("bundle", "all") else None
    return result, bundle


def predict_onnx(
    model_path: str | Path,
    inputs: Iterable[str | Path],
    output_dir: Path,
    batch_size: int = 8,
    report: Callable[[str], None] = print,
) -> PredictSummary:
    """``medzsad predict`` with the exported file in onnxruntime (CPU) through :class:`Detector`; the
    preprocessing is the one stored in the file, the outputs are those of the PyTorch engine."""
    return Detector.from_onnx(model_path, batch_size=batch_size).write_predictions(inputs, output_dir, report)
