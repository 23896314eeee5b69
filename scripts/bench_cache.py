"""The sample cache (``data.cache_dir``) against building samples, in one run: samples/s over a whole
dataset without a cache, with a cold cache (building and writing) and with a warm one (reading back).

Two datasets, generated: a CT DICOM series (one file per slice, HU through the brain window) read as a
folder, and a manifest of 8-bit PNG textures (MVTec layout). Each pass opens the dataset anew (as a
new ``medzsad test`` run does) and reads every sample once; the time includes opening.

    python scripts/bench_cache.py                      # 518 px, 48 slices of 512², 48 PNGs of 512²
    python scripts/bench_cache.py --size 224 --slices 96
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from medzsad.data.cache import CachedSamples
from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.prepare import prepare_mvtec
from medzsad.data.synthetic import make_mvtec_like, make_phantom, write_phantom_dicom_series


def rate(open_dataset, cache: Path | None) -> float:
    """Samples/s of one pass over a freshly opened dataset (through the cache when given)."""
    start = time.perf_counter()
    dataset = open_dataset()
    if cache is not None:
        dataset = CachedSamples(dataset, cache)
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=518, help="model input size")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--side", type=int, default=512, help="slice and image side in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        volume, _ = make_phantom((args.slices, args.side, args.side))
        write_phantom_dicom_series(root / "series", volume.astype(np.float32))
        per_class = max(1, args.images // 4)
        textures = make_mvtec_like(
            root / "mvtec",
            categories=("weave",),
            n_train=1,
            n_test_good=per_class * 2,
            n_test_defect=per_class,
            size=(args.side, args.side),
        )
        prepare_mvtec(textures)
        datasets = {
            f"CT DICOM series, {args.slices} slices": lambda: FolderDataset(root / "series", image_size=args.size),
            "PNG textures (manifest)": lambda: ManifestDataset(textures / "meta.json", image_size=args.size),
        }
        print(f"{args.size} px input, {args.side}² sources; samples/s over one pass, opening included")
        print("| dataset | no cache | cold cache | warm cache | warm / no cache |")
        print("|---|---|---|---|---|")
        for name, open_dataset in datasets.items():
            cache = root / f"cache-{len(name)}"
            plain, cold, warm = rate(open_dataset, None), rate(open_dataset, cache), rate(open_dataset, cache)
            print(f"| {name} | {plain:.1f} | {cold:.1f} | {warm:.1f} | {warm / plain:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
