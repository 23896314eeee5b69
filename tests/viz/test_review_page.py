"""The review page: worst errors first, volumes whole, bounded size, pixels that round-trip."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import zlib

import numpy as np

from medzsad.viz import MapScale, ReviewSample
from medzsad.viz.review_page import PageDecision, review_page


def _sample(i: int, score: float, label: int, volume: str | None = None, z: int | None = None) -> ReviewSample:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    amap = np.full((16, 16), score, dtype=np.float32)
    mask = np.zeros((32, 32), dtype=bool)
    if label:
        mask[8:16, 8:16] = True
    return ReviewSample(f"s{i:03d}", "brain", score, label, image, amap, mask, volume_id=volume, slice_index=z)


def _payload(html: str) -> dict:
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_worst_errors_first_then_by_score() -> None:
    samples = [_sample(0, 0.2, 0), _sample(1, 0.9, 0), _sample(2, 0.1, 1), _sample(3, 0.7, 0), _sample(4, 0.8, 1)]
    page = review_page(samples, dataset="d", scale=MapScale(0, 1), decision=PageDecision(0.5, 0.5, "fixed"))
    # FPs by score (0.9, 0.7), then the FN (0.1), then the rest by score (0.8, 0.2).
    assert page.case_ids == ["s001", "s003", "s002", "s004", "s000"]
    data = _payload(page.html)
    assert [c["outcome"] for c in data["cases"]] == ["FP", "FP", "FN", "TP", "TN"]
    assert data["decision"] == {"image": 0.5, "pixel": 0.5, "origin": "fixed"}


def test_limit_keeps_volumes_whole_and_is_stated() -> None:
    volume = [_sample(10 + z, 0.3, int(z == 2), "v1", z) for z in range(4)]  # slice 2 is a missed lesion
    singles = [_sample(i, 0.6 + i / 100, 0) for i in range(6)]  # six false positives
    page = review_page(volume + singles, dataset="d", scale=MapScale(0, 1), limit=5)
    data = _payload(page.html)
    assert page.n_samples == 10 and page.n_shown <= 5 and data["limit"] == 5
    ids = set(page.case_ids)
    assert not ({s.sample_id for s in volume} & ids) or {s.sample_id for s in volume} <= ids
    assert page.case_ids[0] == "s005", "the highest-scoring false positive leads"


def test_pixels_round_trip_on_the_shared_scale() -> None:
    sample = _sample(7, 0.5, 1)
    sample = dataclasses.replace(sample, anomaly_map=np.linspace(0, 2, 256, dtype=np.float32).reshape(16, 16))
    page = review_page([sample], dataset="d", scale=MapScale(0.0, 2.0), decision=PageDecision(0.5, 1.0))
    case = _payload(page.html)["cases"][0]
    raw = np.frombuffer(zlib.decompress(base64.b64decode(case["blob"])), dtype=np.uint8)
    n = 32 * 32
    image, codes, mask = raw[:n].reshape(32, 32), raw[n : 2 * n].reshape(32, 32), raw[2 * n :].reshape(32, 32)
    assert np.array_equal(image, sample.image) and np.array_equal(mask > 0, sample.mask)
    assert codes.min() == 0 and codes.max() == 255, "codes span the shared scale [0, 2]"
    assert case["lesion"] and case["dice"] is not None


def test_script_breaking_text_is_escaped() -> None:
    sample = dataclasses.replace(_sample(1, 0.5, 0), category="a</script><b>")
    page = review_page([sample], dataset="d", scale=MapScale(0, 1))
    assert page.html.count("</script>") == 2, "only the page's own two script blocks close"
    assert _payload(page.html)["cases"][0]["cat"] == "a</script><b>"
