"""The PHI guard: what may and may not be sent to MLflow."""

from __future__ import annotations

import pytest

from medzsad.tracking import PHIError, find_phi, forbidden_values, phi_guard
from medzsad.tracking.phi import scrub_tree


@pytest.mark.parametrize(
    "value",
    [
        "/data/patients/DOE_JOHN/IM0001.dcm",
        "loaded from /mnt/pacs/export",
        "C:\\Users\\radiology\\scan.dcm",
        "\\\\pacs-server\\share\\study",
        "~/exports/brain",
        "file:///data/scan.nii.gz",
        "s3://hospital-bucket/study1",
    ],
)
def test_rejects_absolute_paths_and_uris(value: str) -> None:
    assert find_phi(value) == "an absolute path or URI"
    with pytest.raises(PHIError, match="absolute path"):
        phi_guard(value, "tag 'source'")


@pytest.mark.parametrize(
    "value",
    ["1.2.840.113619.2.55.3.604688119", "study_1.3.6.1.4.1.9328.50.1.2", "2.25.1234567890.1.2.3"],
)
def test_rejects_dicom_uids(value: str) -> None:
    assert find_phi(value) == "a DICOM UID"


@pytest.mark.parametrize(
    "value",
    ["20210315", "20210315101500", "2021-03-15", "2021/3/15", "15/03/2021", "15 Mar 2021", "scan_19990101"],
)
def test_rejects_dates(value: str) -> None:
    assert find_phi(value) == "a date"


def test_rejects_dicom_person_names() -> None:
    assert find_phi("Doe^John") == "a DICOM person name"


@pytest.mark.parametrize(
    "value",
    [
        "brain_mri/pixel_auroc",
        "overlays/brainmri/brain/s001-3f2a9c.png",
        "ViT-L-14-336/openai",
        "sha256:ab20210315cd9e",  # a date-like run of digits inside a hash is not a date
        "3.17.2",
        "0.001",
        "anomalyclip-brainmri-bbedcb17",
    ],
)
def test_allows_ordinary_names(value: str) -> None:
    assert find_phi(value) is None
    assert phi_guard(value, "x") == value


def test_numbers_are_not_taken_for_dates() -> None:
    assert find_phi(20240101) is None
    assert find_phi(0.5) is None


def test_values_of_the_data_are_rejected_case_insensitively() -> None:
    forbidden = forbidden_values(["Royal Infirmary", "PAT12345", "AB", None, ""])
    assert find_phi("site royal infirmary west", forbidden) == "an identifying value of the data"
    assert find_phi("id-pat12345", forbidden) == "an identifying value of the data"
    # Short values match whole tokens only, so "AB" does not reject "table" or "lab".
    assert find_phi("ab-scan", forbidden) == "an identifying value of the data"
    assert find_phi("table", forbidden) is None
    assert find_phi(12345, forbidden) is None
    # The values belong to the data a run was fed, not to the process: another check is unaffected.
    assert find_phi("id-pat12345") is None


def test_error_message_names_the_field_but_not_the_value() -> None:
    with pytest.raises(PHIError) as info:
        phi_guard("Jane Q Public", "run name", forbidden_values(["Jane Q Public"]))
    assert "run name" in str(info.value)
    assert "Jane Q Public" not in str(info.value)


def test_scrub_tree_redacts_only_failing_strings() -> None:
    tree = {
        "data": {"root": "/data/x", "size": 518, "paths": ["/a/b", "rel/c", "brain=scans", "meta.json"]},
        "checkpoint": "runs/train/epoch_15.safetensors",
        "method": "anomalyclip",
        "site": "Royal Infirmary",
        "when": "2021-01-02",
    }
    scrubbed, count = scrub_tree(tree, forbidden_values(["royal infirmary"]))
    assert scrubbed == {
        "data": {"root": "<redacted>", "size": 518, "paths": ["<redacted>"] * 4},
        "checkpoint": "<redacted>",
        "method": "anomalyclip",
        "site": "<redacted>",
        "when": "<redacted>",
    }
    assert count == 8
