"""The clinical data layer: readers, pixel semantics, CLIP transforms, volumes, manifests, datasets.

This package never imports a model. See docs/data.md for conventions (orientation, intensity, PHI).
"""

from medzsad.utils.lazy import lazy_exports

# Imported on first use, so importing one submodule (or the CLI) does not load torch.
_EXPORTS = {
    "FolderDataset": "datasets",
    "ManifestDataset": "datasets",
    "DataError": "errors",
    "DicomPixelReader": "monai_io",
    "SampleBuilder": "samples",
    "SeriesSelection": "study",
    "Study": "study",
    "scan_inputs": "study",
    "MissingDecoderError": "errors",
    "NotAnImageError": "errors",
    "clean_meta": "ids",
    "pseudonymous_id": "ids",
    "Manifest": "manifest",
    "Record": "manifest",
    "pair_masks_by_name": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "PREPARERS": "prepare",
    "ImageData": "readers",
    "read_frames": "readers",
    "read_image": "readers",
    "read_mask": "readers",
    "Batch": "records",
    "Sample": "records",
    "collate_samples": "records",
    "ClipImageTransform": "transforms",
    "ClipMaskTransform": "transforms",
    "Intensity": "transforms",
    "clip_image_transform": "transforms",
    "clip_mask_transform": "transforms",
    "map_to_original": "transforms",
    "Volume": "volumes",
    "read_volume": "volumes",
    "reassemble": "volumes",
    "volume_samples": "volumes",
    "write_dicom_seg": "dicom",
    "write_nifti": "volumes",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
