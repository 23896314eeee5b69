"""Tables a user reads: a compact terminal table that fits 120 columns, selectable columns, metrics.csv
in the screen's order and unit, and the benchmark table with dataset sizes, a mean row and reasons."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medzsad.engine.config import ConfigError, load_config
from medzsad.engine.evaluate import DatasetEvaluation, write_tables
from medzsad.engine.jobs import format_benchmark_table
from medzsad.metrics import MetricAccumulator


def _evaluation(name: str, seed: int, masks: bool = True) -> DatasetEvaluation:
    rng = np.random.default_rng(seed)
    accumulator = MetricAccumulator(segmentation_thresholds=(0.5,))
    for category in ("brain", "a_long_category_nm"):
        maps = rng.random((6, 24, 24))
        truth = np.zeros((6, 24, 24), bool)
        truth[3:, 4:12, 4:12] = True
        maps[truth] += 0.5
        labels = [0, 0, 0, 1, 1, 1]
        if masks:
            accumulator.update(category, scores=maps.max(axis=(1, 2)), maps=maps, masks=truth, labels=labels)
        else:
            accumulator.update(category, scores=maps.max(axis=(1, 2)), labels=labels)
    return DatasetEvaluation(name, accumulator.compute(), samples=[])


def test_compact_table_fits_120_columns_and_columns_are_selectable() -> None:
    report = _evaluation("d", 0).report
    compact = report.format_table()
    assert max(len(line) for line in compact.splitlines()) <= 120
    assert "pixel_aupro@0.3[mvtec-exact]" in compact and "dice@0.5" not in compact
    chosen = report.format_table(columns=["image_auroc", "dice"]).splitlines()[0].split()
    assert chosen == ["category", "image_auroc", "dice@0.5"]
    assert "normal_fp_image_rate@0.5" in report.format_table(columns=["all"])
    assert load_config(None, ["eval.columns=[image_auroc,pixel_aupro]"]).eval.columns == ["image_auroc", "pixel_aupro"]
    with pytest.raises(ConfigError, match=r"eval\.columns: unknown metric 'auc'"):
        load_config(None, ["eval.columns=[auc]"])


def test_metrics_csv_in_screen_order_with_units(tmp_path) -> None:
    evaluation = _evaluation("d", 1)
    csv_path, _ = write_tables(tmp_path, {"d": evaluation})
    rows = list(csv.DictReader(csv_path.open()))
    header = list(rows[0])
    screen = evaluation.report.format_table(columns=["all"]).splitlines()[0].split()[1:]
    assert header == ["dataset", "category", "images", *(f"{name} [%]" for name in screen)]
    mean = next(row for row in rows if row["category"] == "mean")
    expected = 100 * evaluation.report.macro_mean["image_auroc"]
    assert float(mean["image_auroc [%]"]) == pytest.approx(expected, abs=1e-5)
    assert mean["images"] == "12" and rows[0]["images"] == "6"


def test_benchmark_table_has_sizes_mean_row_and_reasons() -> None:
    results = {
        "m1": {"d1": _evaluation("d1", 2), "d2": _evaluation("d2", 3, masks=False)},
        "m2": {"d1": _evaluation("d1", 4), "d2": _evaluation("d2", 5, masks=False)},
    }
    lines = format_benchmark_table(results).splitlines()
    assert lines[0].startswith("| dataset | images | m1 img (AUROC, AP)")
    d1 = next(line for line in lines if line.startswith("| d1 |"))
    assert d1.startswith("| d1 | 12 | (")
    mean = next(line for line in lines if line.startswith("| mean |"))
    m1 = [results["m1"][d].report.macro_mean["image_auroc"] for d in ("d1", "d2")]
    assert f"({100 * sum(m1) / 2:.1f}, " in mean
    assert "(–, –)" in mean  # pixel metrics are undefined on d2, so there is no mean over datasets
    assert any(line.startswith("– m1 on d2, m2 on d2: undefined in") and "no masks given" in line for line in lines)
