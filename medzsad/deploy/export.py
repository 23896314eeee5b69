"""``medzsad export``: a method's whole inference graph to ONNX, and a MONAI bundle around it.

The ONNX graph takes a preprocessed batch ``images [B, 3, S, S]`` (float32, CLIP-normalised, any
``B``) and returns ``scores [B]`` and ``maps [B, S, S]`` (see :class:`~medzsad.deploy.graph.InferenceGraph`
for what is folded in as constants and what runs per image). It is traced with ``torch.export``
(``torch.onnx.export(dynamo=True)``): the TorchScript tracer cannot follow the backbone's
shape-dependent position-embedding resize. After export the file is checked against PyTorch on a
batch of another size than the traced one, so a graph whose Python control flow depended on the
batch or on pixel values is refused instead of silently giving other numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medzsad
from medzsad.data.transforms import ClipImageTransform, Intensity
from medzsad.deploy.errors import DeployError
from medzsad.deploy.graph import InferenceGraph, deployment_noise, frozen_text
from medzsad.deploy.onnx_runtime import INPUT_NAME, OUTPUT_NAMES, ExportMetadata, OnnxModel
from medzsad.engine.calibrate import Calibration, check_made_for, model_digest, preprocessing
from medzsad.methods.base import ZsadMethod

#: ONNX opset of the exported graphs (the native opset of torch's ONNX translator).
OPSET = 18
#: Largest |ONNX - PyTorch| accepted by the post-export check (scores and maps are probabilities).
CHECK_TOLERANCE = 1e-3
#: Above this size the weights go to ``<file>.data`` beside the graph (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how closely the file reproduced PyTorch in its check.

    Attributes:
        path: the ``.onnx`` file.
        max_abs_diff: ``{"scores": ..., "maps": ...}`` over the check batch.
        check_batch: images in the check batch (differs from the traced batch of 2).
    """

    path: Path
    max_abs_diff: dict[str, float]
    check_batch: int
    thresholds: str = ""
    fewshot: str = ""


def describe_transform(transform: ClipImageTransform, slice_axis: str | int = "native") -> dict[str, Any]:
    """The preprocessing a deployed model needs, as JSON-ready values (with how volumes are sliced)."""
    intensity = dataclasses.asdict(transform.intensity)
    return {
        "pad_to_square": bool(transform.pad_to_square),
        "intensity": {k: list(v) if isinstance(v, tuple) else v for k, v in intensity.items()},
        "mean": [float(v) for v in transform.mean],
        "std": [float(v) for v in transform.std],
        "slice_axis": slice_axis,
    }


def transform_from_metadata(metadata: ExportMetadata) -> ClipImageTransform:
    """The :class:`ClipImageTransform` an exported file was made with."""
    pre = metadata.preprocessing
    intensity = {k: tuple(v) if isinstance(v, list) else v for k, v in pre["intensity"].items()}
    return ClipImageTransform(
        metadata.image_size,
        pad_to_square=pre["pad_to_square"],
        intensity=Intensity(**intensity),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
    )


def export_thresholds(calibration: Calibration | None) -> dict[str, Any]:
    """The ``thresholds`` metadata: the calibration's image, pixel and volume thresholds and their origin,
    or the fixed 0.5 ``"default (uncalibrated)"``."""
    if calibration is None:
        return {"image": 0.5, "pixel": 0.5, "source": "default (uncalibrated)"}
    levels = {"image": calibration.image, "pixel": calibration.pixel, "volume": calibration.volume}
    values = {level: None if rule is None else rule.value for level, rule in levels.items()}
    return {**values, "source": f"calibrated ({calibration.image.origin()})"}


def export_metadata(
    method: ZsadMethod,
    transform: ClipImageTransform,
    calibration: Calibration | None = None,
    slice_axis: str | int = "native",
) -> ExportMetadata:
    """The description written into an exported file. The calibration goes in whole (it holds no paths
    and no ids) with the model digest it was checked against, so a deployed file decides as
    ``medzsad predict calibration=...`` does."""
    extra = {
        "method_config": json.dumps(method.config.to_dict(), sort_keys=True),
        "backbone": json.dumps(method.backbone.identity(), sort_keys=True),
        "model_digest": model_digest(method),
        "opset": str(OPSET),
    }
    if calibration is not None:
        extra["calibration"] = json.dumps(calibration.to_json(), sort_keys=True)
    if deployment_noise(method) is not None:
        extra["test_draws"] = "seeded: every image gets the draws of predict's first input, run seed 0"
    bank = getattr(method, "bank", None)
    if bank is not None:
        extra["fewshot"] = json.dumps({k: bank.meta.get(k, "") for k in ("k", "layers", "stream", "patches")})
    return ExportMetadata(
        method=method.name,
        image_size=method.image_size,
        preprocessing=describe_transform(transform, slice_axis),
        thresholds=export_thresholds(calibration),
        medzsad_version=medzsad.__version__,
        extra=extra,
    )


def calibration_from_metadata(metadata: ExportMetadata) -> Calibration | None:
    """The calibration an exported file carries, or ``None``."""
    text = metadata.extra.get("calibration")
    return None if not text else Calibration.from_json(json.loads(text))


def check_onnx_calibration(calibration: Calibration, metadata: ExportMetadata, source: Any) -> None:
    """Refuse a calibration made for another model than the exported one (method and model digest, which
    the file records), or with other data settings than the file's preprocessing."""
    from medzsad.engine.jobs import data_section

    axis = metadata.preprocessing.get("slice_axis", "native")
    settings = preprocessing(data_section(transform_from_metadata(metadata), axis))
    check_made_for(calibration, metadata.method, metadata.extra.get("model_digest", ""), source, settings)


def export_onnx(
    method: ZsadMethod,
    path: str | os.PathLike[str],
    transform: ClipImageTransform | None = None,
    calibration: Calibration | None = None,
    check: bool = True,
    slice_axis: str | int = "native",
) -> ExportResult:
    """Export ``method``'s inference graph (fp32, CPU) to ``path`` with its metadata; ``calibration``
    (checked against ``method`` by the caller) goes into the metadata.

    Raises:
        DeployError: the graph cannot be traced (what failed and what would be needed), or the file
            does not reproduce PyTorch on a batch of another size.
    """
    path = Path(path)
    transform = transform or ClipImageTransform(method.image_size)
    if transform.image_size != method.image_size:
        raise DeployError(f"transform size {transform.image_size} differs from the model's {method.image_size}")
    method = method.to("cpu").eval()
    method.backbone.set_precision("fp32")
    graph = InferenceGraph(method).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    _trace(graph, path)
    metadata = export_metadata(method, transform, calibration, slice_axis)
    _write_metadata(path, metadata)
    diffs = check_export(graph, path, batch=3) if check else {}
    rules = metadata.thresholds
    levels = ", ".join(f"{k} {rules[k]:.6g}" for k in ("image", "pixel", "volume") if rules.get(k) is not None)
    fewshot = json.loads(metadata.extra.get("fewshot", "{}"))
    bank = f"k={fewshot['k']}, layers {fewshot['layers']}, {fewshot['patches']} patches per layer" if fewshot else ""
    return ExportResult(path, diffs, 3 if check else 0, f"{levels} ({rules['source']})", bank)


def _trace(graph: InferenceGraph, path: Path) -> None:
    size = graph.method.image_size
    # A batch of 2: torch.export specialises dimensions of size 1 to constants.
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    try:
        with frozen_text(graph), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                verbose=False,
            )
        program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    except Exception as exc:
        raise DeployError(untraceable_message(graph.method.name, exc)) from None


def untraceable_message(name: str, exc: BaseException) -> str:
    """One line: which method, what stopped the tracer, and what its code would need."""
    text = " ".join(str(exc).split())
    marker = "Exception summary"
    if marker in text:
        text = text.split(marker, 1)[1]
    detail = text.strip(" #:")[:240]
    where = _user_frame(exc)
    return (
        f"method {name!r}: its inference graph cannot be traced for ONNX{where} "
        f"({exc.__class__.__name__}: {detail}). "
        "Export needs predict() to be tensor operations only: no Python branches or loops on tensor values "
        "or on the batch size, no .item()/.tolist(), no custom kernels"
    )


def _user_frame(exc: BaseException) -> str:
    """`` at file.py:line`` of the deepest frame outside the installed libraries along the exception chain."""
    import traceback

    found = ""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            if "site-packages" not in frame.filename and "medzsad/deploy" not in frame.filename:
                found = f" at {Path(frame.filename).name}:{frame.lineno}"
        exc = exc.__cause__ or exc.__context__
    return found


def _write_metadata(path: Path, metadata: ExportMetadata) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def check_export(graph: InferenceGraph, path: Path, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Max |ONNX - PyTorch| of scores and maps on ``batch`` random images; refuses a disagreeing file."""
    size = graph.method.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = [t.numpy() for t in graph(images)]
    got = OnnxModel(path).run(images.numpy())
    diffs = {name: float(np.abs(g - e).max()) for name, g, e in zip(OUTPUT_NAMES, got, expected)}
    worst = max(diffs.values())
    if not np.isfinite(worst) or worst > CHECK_TOLERANCE:
        path.unlink(missing_ok=True)
        raise DeployError(
            f"method {graph.method.name!r}: the exported graph differs from PyTorch by {worst:.3g} on a batch of "
            f"{batch} (traced with 2): its predict() takes Python decisions on the batch size or on pixel "
            "values, which tracing freezes; they would need to be tensor operations"
        )
    return diffs
