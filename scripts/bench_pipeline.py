"""Can the host keep a fast GPU busy? Data-loading throughput per worker and host-side work per image.

At a model throughput of R images/s, every image leaves 1/R seconds for (a) reading and preprocessing,
spread over the DataLoader workers, and (b) the evaluation loop's own work on the main process: copying
maps back, metric accumulation. This script measures both on this machine, in one run, for inputs of
the sizes clinical and industrial sets have, and prints how many workers a target rate needs and the
share of the per-image budget that the main process uses.

    python scripts/bench_pipeline.py                  # target 300 images/s (issue 8's H100 goal)
    python scripts/bench_pipeline.py --target 1000 --images 96
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medzsad.data.prepare import prepare_mvtec
from medzsad.data.records import Batch, collate_samples
from medzsad.data.synthetic import make_mvtec_like, write_dicom_image
from medzsad.engine.config import load_config
from medzsad.engine.evaluate import _update_metrics
from medzsad.engine.jobs import open_dataset
from medzsad.metrics import MetricAccumulator


def mvtec_like(root: Path, images: int) -> Path:
    """RGB PNGs of 1024 x 1024 (MVTec AD's largest) with defect masks on half of them."""
    per_kind = images // 4
    make_mvtec_like(root, n_train=0, n_test_good=images // 2, n_test_defect=per_kind, size=(1024, 1024))
    prepare_mvtec(root, root / "meta.json")
    return root / "meta.json"


def ct_slices(root: Path, images: int) -> Path:
    """512 x 512 CT slices as single DICOM files (stored values with a rescale to HU, as scanners write);
    read as a folder (unlabelled), the way ``medzsad predict`` reads an archive."""
    rng = np.random.default_rng(0)
    for i in range(images):
        stored = rng.integers(0, 2400, size=(512, 512), dtype=np.uint16)
        write_dicom_image(root / f"{i:04d}.dcm", stored, modality="CT", intercept=-1024, seed=f"ct{i}")
    return root


def loader_rate(dataset_path: Path, workers: int, image_size: int, batch: int) -> float:
    """Images/s through the evaluation's DataLoader (decode, intensity, resize, normalise, collate)."""
    config = load_config(None, ["device=cpu", "tracking.enabled=false"])
    dataset = open_dataset(dataset_path, config, image_size)
    loader = DataLoader(dataset, batch_size=batch, collate_fn=collate_samples, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(b) for b in loader)
    return count / (time.perf_counter() - start)


def host_ms_per_image(image_size: int, batch: int, rounds: int, pixel_bins: int | None = None) -> float:
    """Main-process work of the evaluation loop per image: maps to numpy and metric accumulation
    (exact, or the constant-memory statistic with ``pixel_bins`` levels)."""
    rng = np.random.default_rng(0)
    masks = torch.zeros(batch, image_size, image_size)
    masks[1::2, 100:180, 200:260] = 1
    accumulator = MetricAccumulator(segmentation_thresholds=(0.5,), pixel_bins=pixel_bins)
    maps_device = torch.rand(batch, image_size, image_size)
    batch_record = Batch(
        image=torch.zeros(batch, 1, 1, 1),
        mask=masks,
        has_mask=torch.ones(batch, dtype=torch.bool),
        label=torch.tensor([i % 2 for i in range(batch)]),
        category=["cat"] * batch,
        sample_id=[f"s{i}" for i in range(batch)],
        specie=["x"] * batch,
        original_size=[(image_size, image_size)] * batch,
        slice_index=[None] * batch,
        volume_id=[None] * batch,
        meta=[{}] * batch,
    )
    start = time.perf_counter()
    for _ in range(rounds):
        maps = maps_device.float().cpu().numpy()
        scores = rng.random(batch)
        _update_metrics(accumulator, batch_record, scores, maps, pixel=True)
    return 1000 * (time.perf_counter() - start) / (rounds * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48, help="images per input kind")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--target", type=float, default=300.0, help="model throughput to feed, images/s")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per worker, as a DataLoader worker gets
    budget_ms = 1000 / args.target
    work = Path(tempfile.mkdtemp(prefix="medzsad-pipeline-"))
    inputs = {
        "RGB PNG 1024x1024": mvtec_like(work / "png", args.images),
        "CT DICOM 512x512": ct_slices(work / "dicom", args.images),
    }
    print(f"{args.images} images per kind, to {args.image_size} px; target {args.target:.0f} images/s")
    for name, manifest in inputs.items():
        rates = {w: loader_rate(manifest, w, args.image_size, args.batch) for w in args.workers}
        single = rates.get(0, next(iter(rates.values())))
        shown = ", ".join(f"{w} workers {r:.1f}" for w, r in rates.items())
        print(
            f"{name}: images/s with {shown}; one process {1000 / single:.1f} ms/image "
            f"-> about {math.ceil(args.target / single)} workers for {args.target:.0f} images/s",
            flush=True,
        )
    rounds = max(1, args.images // args.batch)
    for label, bins in (("exact", None), ("pixel_bins=65536", 65536)):
        host = host_ms_per_image(args.image_size, args.batch, rounds, bins)
        print(
            f"main-process work per image (maps to host, {label} metric accumulation at {args.image_size} px): "
            f"{host:.2f} ms = {100 * host / budget_ms:.0f}% of the {budget_ms:.2f} ms per image at {args.target:.0f}/s"
        )


if __name__ == "__main__":
    main()
