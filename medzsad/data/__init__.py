"""The clinical data layer: readers, pixel semantics, CLIP transforms, volumes, manifests, datasets.

This package never imports a model. See docs/data.md for conventions (orientation, intensity, PHI).
"""

from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.errors import DataError, MissingDecoderError, NotAnImageError
from medzsad.data.ids import clean_meta, pseudonymous_id
from medzsad.data.manifest import Manifest, Record, pair_masks_by_name, read_manifest, write_manifest
from medzsad.data.prepare import PREPARERS
from medzsad.data.readers import ImageData, read_frames, read_image, read_mask
from medzsad.data.records import Batch, Sample, collate_samples
from medzsad.data.transforms import (
    ClipImageTransform,
    ClipMaskTransform,
    Intensity,
    clip_image_transform,
    clip_mask_transform,
    map_to_original,
)
from medzsad.data.volumes import (
    Volume,
    read_volume,
    reassemble,
    volume_samples,
    write_dicom_seg,
    write_nifti,
)

__all__ = [
    "PREPARERS",
    "Batch",
    "ClipImageTransform",
    "ClipMaskTransform",
    "DataError",
    "FolderDataset",
    "ImageData",
    "Intensity",
    "Manifest",
    "ManifestDataset",
    "MissingDecoderError",
    "NotAnImageError",
    "Record",
    "Sample",
    "Volume",
    "clean_meta",
    "clip_image_transform",
    "clip_mask_transform",
    "collate_samples",
    "map_to_original",
    "pair_masks_by_name",
    "pseudonymous_id",
    "read_frames",
    "read_image",
    "read_manifest",
    "read_mask",
    "read_volume",
    "reassemble",
    "volume_samples",
    "write_dicom_seg",
    "write_manifest",
    "write_nifti",
]
