"""Running an exported medzsad ONNX file with onnxruntime on the CPU; imports neither torch nor onnx.

The file carries its own description as ONNX metadata (``metadata_props``, strings): the export
format version, the medzsad version that wrote it, the method and its config, the backbone, the
preprocessing (input size, padding, intensity mapping) and the decision thresholds. A file without
that description, or written in another export format, is refused with one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medzsad.deploy.errors import DeployError

#: Version of the graph interface and metadata layout; a file of another version is refused.
EXPORT_FORMAT = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself.

    Attributes:
        method: registered method name.
        image_size: side ``S`` of the square input ``[B, 3, S, S]``.
        preprocessing: ``pad_to_square``, ``intensity`` (mode, window, percentiles), ``mean``, ``std``.
        thresholds: ``image`` and ``pixel`` decision thresholds and their ``source``.
        medzsad_version: the version that wrote the file.
        extra: every other key (method config, backbone identity, noise note...).
    """

    method: str
    image_size: int
    preprocessing: dict[str, Any]
    thresholds: dict[str, Any]
    medzsad_version: str
    extra: dict[str, str]

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` strings of this description."""
        return {
            "medzsad_export_format": str(EXPORT_FORMAT),
            "medzsad_version": self.medzsad_version,
            "method": self.method,
            "image_size": str(self.image_size),
            "preprocessing": json.dumps(self.preprocessing, sort_keys=True),
            "thresholds": json.dumps(self.thresholds, sort_keys=True),
            **self.extra,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> ExportMetadata:
        """Read and check a file's ``metadata_props``; refuses files of another export format."""
        found = props.get("medzsad_export_format")
        if found is None:
            raise DeployError(f"{source}: not a medzsad export (no medzsad metadata in the ONNX file)")
        if found != str(EXPORT_FORMAT):
            raise DeployError(
                f"{source}: written by medzsad {props.get('medzsad_version', '?')} in export format {found}; "
                f"this medzsad ({_version()}) reads format {EXPORT_FORMAT}: export the checkpoint again"
            )
        try:
            known = ("medzsad_export_format", "medzsad_version", "method", "image_size", "preprocessing", "thresholds")
            return cls(
                method=props["method"],
                image_size=int(props["image_size"]),
                preprocessing=json.loads(props["preprocessing"]),
                thresholds=json.loads(props["thresholds"]),
                medzsad_version=props["medzsad_version"],
                extra={k: v for k, v in props.items() if k not in known},
            )
        except (KeyError, ValueError) as exc:
            raise DeployError(f"{source}: damaged medzsad metadata ({exc.__class__.__name__}: {exc})") from None


def _version() -> str:
    import medzsad

    return medzsad.__version__


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DeployError("onnxruntime is not installed: pip install 'medzsad[onnx]'") from None
    return onnxruntime


class OnnxModel:
    """An exported medzsad model in an onnxruntime CPU session.

    Args:
        path: the ``.onnx`` file (with its ``.onnx.data`` beside it for large models).
        threads: intra-op threads; ``None`` lets onnxruntime choose (every core).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeployError(f"{self.path}: ONNX file not found")
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise DeployError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ExportMetadata.from_props(props, str(self.path))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images [B, 3, S, S]`` float32, CLIP-normalised -> ``(scores [B], maps [B, S, S])``, float32."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        size = self.metadata.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise DeployError(f"{self.path}: expects images [B, 3, {size}, {size}], got {list(images.shape)}")
        scores, maps = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return scores, maps

    def __call__(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` on a numpy array or anything with ``.numpy()`` (a CPU tensor)."""
        array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        return self.run(array)
