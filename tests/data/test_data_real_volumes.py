"""The real NRRD scans in ../shared/data: slicing, a map function, and back to a volume in the scan's
geometry, with lesion masks aligned to their slices (an oracle map scores AUROC 1.0)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from datahelpers import oracle_volume_map
from sklearn.metrics import roc_auc_score

from medzsad.data.volumes import read_volume, slice_labels, write_nifti

CASES = {  # name: (shape z, y, x; slices with lesion voxels), from ../shared/data/README.md
    "breast1": ((21, 120, 45), 3),
    "brain2": ((23, 256, 256), 3),
    "brain1": ((25, 256, 256), 7),
    "lung1": ((48, 512, 512), 3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nrrd_slicing_round_trip_keeps_geometry_and_alignment(shared_data_dir, tmp_path, name):
    folder = shared_data_dir / "radiomics-samples"
    image = read_volume(folder / f"{name}_image.nrrd")
    label = read_volume(folder / f"{name}_label.nrrd", image=False)
    shape, lesion_slices = CASES[name]
    assert image.shape == shape
    assert int(slice_labels(label).sum()) == lesion_slices

    # The oracle returns each slice's own mask at model resolution: after resizing back to the slice's
    # pixels and reassembling, lesion voxels must outrank every other voxel.
    result = oracle_volume_map(image, label)
    out = write_nifti(result, image, tmp_path / f"{name}_map.nii")

    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(folder / f"{name}_label.nrrd"))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)
    truth = sitk.GetArrayFromImage(source).ravel() > 0
    scores = sitk.GetArrayFromImage(written).ravel()
    assert exact_auroc(truth, scores) == 1.0


def exact_auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    """sklearn's AUROC over all voxels, with the (many) voxels scoring exactly 0 folded into two weighted
    points: ties stay ties, so the value is identical, and sklearn sorts far fewer numbers."""
    nonzero = scores != 0
    zero_truth = truth[~nonzero]
    y = np.concatenate([truth[nonzero], [False, True]])
    s = np.concatenate([scores[nonzero], [0.0, 0.0]])
    w = np.concatenate([np.ones(int(nonzero.sum())), [np.sum(~zero_truth), np.sum(zero_truth)]])
    keep = w > 0
    return float(roc_auc_score(y[keep], s[keep], sample_weight=w[keep]))


def test_exact_auroc_matches_plain_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.1
    scores = np.where(rng.random(5000) < 0.7, 0.0, rng.random(5000) + truth * 0.3)
    assert exact_auroc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
