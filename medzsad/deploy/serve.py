"""The deployment jobs: export a method (ONNX and/or MONAI bundle) and predict with onnxruntime."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from medzsad.data.transforms import ClipImageTransform
from medzsad.deploy.bundle import write_bundle
from medzsad.deploy.detector import Detector
from medzsad.deploy.export import ExportResult, export_onnx
from medzsad.engine.calibrate import Calibration
from medzsad.engine.predict import PredictSummary
from medzsad.methods.base import ZsadMethod

FORMATS = ("onnx", "bundle", "all")


def export_formats(
    method: ZsadMethod,
    transform: ClipImageTransform,
    output_dir: Path,
    fmt: str = "all",
    calibration: Calibration | None = None,
    slice_axis: str | int = "native",
) -> tuple[ExportResult, Path | None]:
    """``output_dir/model.onnx``, and with ``bundle``/``all`` the bundle ``output_dir/bundle``."""
    result = export_onnx(method, Path(output_dir) / "model.onnx", transform, calibration, slice_axis=slice_axis)
    bundle = write_bundle(result.path, Path(output_dir) / "bundle") if fmt in ("bundle", "all") else None
    return result, bundle


def predict_onnx(
    model_path: str | Path,
    inputs: Iterable[str | Path],
    output_dir: Path,
    batch_size: int = 8,
    report: Callable[[str], None] = print,
    calibration: str | Path | None = None,
    stop_on_error: bool = False,
    rescaled: bool = False,
) -> PredictSummary:
    """``medzsad predict`` with the exported file in onnxruntime (CPU) through :class:`Detector`; the
    preprocessing is the one stored in the file, the outputs are those of the PyTorch engine, with
    ``decisions.csv`` and masks when the file carries a calibration or ``calibration`` names one."""
    detector = Detector.from_onnx(model_path, calibration, batch_size=batch_size)
    return detector.write_predictions(inputs, output_dir, report, stop_on_error, rescaled)
