"""Benchmark: exact AUPRO against the MVTec reference algorithm and the 200-threshold variant, in one run.

    .venv/bin/python scripts/bench_metrics.py                 # 200 maps of 518x518 (the issue's setting)
    .venv/bin/python scripts/bench_metrics.py --n-maps 20     # quick run

Prints wall times, speed-up ratios, absolute differences and peak memory, and the same for the
constant-memory statistic (``pixel_bins``) against the exact one. Targets (issue 3): exact to
1e-6 vs the reference, >= 6x faster than the reference algorithm, >= 25x faster than the 200-threshold
variant as the papers run it, peak memory within 3x of the maps.

"The reference" is the slow MVTec AD algorithm (per-image labelling, argsort of every pixel, cumulative
sums, float32 FPR as in the official script); "cflow200 literal" relabels every mask at each of the 200
thresholds as AnomalyCLIP/FAPrompt's ``cal_pro_score`` does. Both live in ``tests/metrics`` and are the
ones the tests check against. Data: CLIP-like patch maps (37x37 upsampled and smoothed) with a weak
signal over 1-3 irregular regions in about half of the images.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "metrics"))

from metrics_reference import reference_aupro, reference_cflow200  # noqa: E402
from metrics_synthetic import realistic_category  # noqa: E402

from medzsad.metrics import MetricAccumulator, aupro, aupro_cflow200, pixel_metrics  # noqa: E402

BINS = 65536


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_bytes(function, *args, **kwargs) -> int:
    """Peak bytes allocated by ``function`` (numpy allocations are traced by tracemalloc)."""
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def accumulate(maps, masks, batch: int = 16, pixel_bins: int | None = None):
    accumulator = MetricAccumulator(pixel_bins=pixel_bins)
    for start in range(0, len(maps), batch):
        accumulator.update("bench", maps=maps[start : start + batch], masks=masks[start : start + batch])
    return accumulator.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-maps", type=int, default=200, help="number of maps (default 200)")
    parser.add_argument("--size", type=int, default=518, help="map height and width (default 518)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of our AUPRO; the median is used")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    maps, masks = realistic_category(args.n_maps, args.size, seed=args.seed)
    regions = pixel_metrics(maps, masks).counts["regions"]
    print(
        f"data: {args.n_maps} maps of {args.size}x{args.size} float32 ({maps.nbytes / 2**20:.0f} MiB), "
        f"{int(masks.any(axis=(1, 2)).sum())} anomalous images, {regions} regions, "
        f"{int(masks.sum())} anomalous pixels"
    )

    ours_runs = [timed(aupro, maps, masks) for _ in range(args.repeats)]
    ours_value, ours_time = ours_runs[0][0].value, statistics.median(t for _, t in ours_runs)
    compat_value, compat_time = timed(lambda: aupro_cflow200(maps, masks).value)
    _, all_pixel_time = timed(pixel_metrics, maps, masks, include_cflow200=True)
    reference_value, reference_time = timed(reference_aupro, maps, masks, 0.3, np.float32)
    literal_value, literal_time = timed(reference_cflow200, maps, masks.astype(np.float32))

    aupro_peak = peak_bytes(aupro, maps, masks)
    accumulator_peak = peak_bytes(accumulate, maps, masks)

    # Constant-memory statistic: maps must be in [0, 1]; the exact metric is compared on the same maps.
    unit = ((maps - maps.min()) / (maps.max() - maps.min())).astype(np.float32)
    exact_unit, exact_unit_time = timed(accumulate, unit, masks)
    binned_unit, binned_time = timed(accumulate, unit, masks, pixel_bins=BINS)
    binned_peak = peak_bytes(accumulate, unit, masks, pixel_bins=BINS)
    exact_values, binned_values = exact_unit.macro_mean.values, binned_unit.macro_mean.values
    binned_diffs = {
        "AU-PRO": abs(
            binned_values[f"pixel_aupro@0.3[mvtec-binned{BINS}]"] - exact_values["pixel_aupro@0.3[mvtec-exact]"]
        ),
        **{key: abs(binned_values[key] - exact_values[key]) for key in ("pixel_auroc", "pixel_ap", "pixel_f1max")},
    }

    rows = [
        ("ours: aupro (exact, MVTec)", ours_value, ours_time),
        ("reference MVTec algorithm", reference_value, reference_time),
        ("cflow200 literal (AnomalyCLIP/FAPrompt)", literal_value, literal_time),
        ("ours: aupro_cflow200 (compat, fast)", compat_value, compat_time),
    ]
    print(f"\n{'implementation':42s} {'AUPRO@0.3':>11s} {'time [s]':>9s}")
    for name, value, seconds in rows:
        print(f"{name:42s} {value:11.7f} {seconds:9.2f}")
    print(f"{'ours: all pixel metrics incl. both AUPROs':42s} {'':11s} {all_pixel_time:9.2f}")

    print("\nratios and differences")
    print(f"  speed-up vs reference MVTec algorithm : {reference_time / ours_time:7.1f}x   (target >= 6x)")
    print(f"  speed-up vs cflow200 literal          : {literal_time / ours_time:7.1f}x   (target >= 25x)")
    print(f"  |ours - reference|                    : {abs(ours_value - reference_value):.2e}  (target <= 1e-6)")
    print(f"  |compat fast - cflow200 literal|      : {abs(compat_value - literal_value):.2e}")
    print(f"  exact - cflow200 (metric gap)         : {ours_value - literal_value:+.4f}")
    print("\npeak memory (tracemalloc), relative to the maps")
    print(f"  aupro()                               : {aupro_peak / 2**20:7.0f} MiB = {aupro_peak / maps.nbytes:.2f}x")
    print(
        f"  MetricAccumulator, 16-map batches     : {accumulator_peak / 2**20:7.0f} MiB = "
        f"{accumulator_peak / maps.nbytes:.2f}x   (target <= 3x)"
    )
    print(f"\nconstant-memory pixel metrics (MetricAccumulator(pixel_bins={BINS}), maps rescaled to [0, 1])")
    print(f"  accumulate + compute, exact / binned  : {exact_unit_time:.2f} s / {binned_time:.2f} s")
    print(
        f"  peak memory, binned                   : {binned_peak / 2**20:7.0f} MiB = {binned_peak / maps.nbytes:.2f}x "
        f"(per-batch temporaries; the kept state is {24 * BINS / 2**20:.1f} MiB whatever the number of maps)"
    )
    print("  |binned - exact|                      : " + ", ".join(f"{k} {v:.1e}" for k, v in binned_diffs.items()))


if __name__ == "__main__":
    main()
