"""Shared data for tracking tests: run identity, a config with a path in it, synthetic samples."""

from __future__ import annotations

import numpy as np

from medzsad.tracking import ReviewSample

RUN_KWARGS = {
    "method": "anomalyclip",
    "backbone": "ViT-L-14-336/openai",
    "weight_hash": "sha256:3f1c0e9d",
    "target_dataset": "brainmri",
    "aux_data": "mvtec",
    "code_version": "git-1a2b3c4",
}

# The shape of the engine's RunConfig.to_dict(), with a path and an object repr in it.
CONFIG_DICT = {
    "method": "anomalyclip",
    "method_config": {"prompt_length": 12, "depth": 9, "features": [6, 12, 18, 24]},
    "backbone": {"model_name": "ViT-L-14-336", "weights_path": "/data/hospital/weights/clip.pt"},
    "data": {"test": ["/data/hospital/exports/brain"], "ct_window": [40.0, 80.0], "split": "test"},
    "train": {"epochs": 15, "lr": 0.001, "optimizer_obj": "<torch.optim.Adam object at 0x7f3a2b>"},
    "logging": {"verbose": True},
}


def make_samples(n: int = 12, size: int = 48, seed: int = 0) -> list[ReviewSample]:
    """Synthetic review samples: anomalies have a bright square with a matching mask."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % 2
        image = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
        amap = (rng.random((size // 2, size // 2)) * 0.1).astype(np.float32)
        mask = np.zeros((size, size), dtype=bool)
        if label:
            mask[10:26, 12:30] = True
            amap[5:13, 6:15] = 0.6 + 0.3 * rng.random()
        samples.append(
            ReviewSample(
                sample_id=f"s{i:03d}-{rng.integers(1 << 30):08x}",
                category="brain" if i < n // 2 else "head",
                score=float(amap.max()),
                label=label,
                image=image,
                anomaly_map=amap,
                mask=mask,
            )
        )
    return samples


def make_brain(n: int = 10, size: int = 128, seed: int = 2) -> list[ReviewSample]:
    """Synthetic axial brain MR slices (skull ring, tissue, ventricles); odd ones carry a bright
    lesion with its mask, and the map is hot on the lesion (and, weaker, on the skull)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    head = (yy / 0.42) ** 2 + (xx / 0.34) ** 2
    ventricles = ((yy + 0.02) / 0.1) ** 2 + ((np.abs(xx) - 0.05) / 0.035) ** 2 < 1
    samples = []
    for i in range(n):
        label = i % 2
        image = np.where(head < 1, 110.0, 0.0) + np.where((head > 0.8) & (head < 1), 90, 0) - 70 * ventricles
        image += rng.normal(0, 5, image.shape) * (head < 1)
        cy, cx = 0.12 + 0.05 * rng.random(), -0.15 + 0.3 * rng.random()
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.06**2) & bool(label)
        image[mask] += 70
        amap = (0.05 * rng.random((size, size)) + 0.15 * ((head > 0.8) & (head < 1))).astype(np.float32)
        amap[mask] += 0.6 + 0.2 * rng.random()
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        samples.append(
            ReviewSample(
                sample_id=f"mr{i:03d}-{rng.integers(1 << 30):08x}",
                category="brain" if i < n // 2 else "head",
                score=float(amap.max()),
                label=label,
                image=np.repeat(pixels[..., None], 3, axis=2),
                anomaly_map=amap,
                mask=mask,
                intensity="percentile 0.5-99.5",
            )
        )
    return samples


def make_volume(volume_id: str = "vol-7f3a", depth: int = 14, size: int = 96, seed: int = 1) -> list[ReviewSample]:
    """Slices of a synthetic CT volume (stored through a lung window): a body ellipse with lung
    fields and a nodule spanning slices 4-9, the map hot on the nodule."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.38 * size)) ** 2 + ((xx - size / 2) / (0.46 * size)) ** 2 < 1
    lungs = (((yy - size / 2) / (0.28 * size)) ** 2 + ((np.abs(xx - size / 2) - 0.2 * size) / (0.15 * size)) ** 2) < 1
    slices = []
    for z in range(depth):
        image = np.where(body, 150, 0) - np.where(lungs, 120, 0) + rng.normal(0, 6, (size, size))
        radius = max(0.0, 7.0 - 1.6 * abs(z - 6.5))
        mask = (yy - 42) ** 2 + (xx - 30) ** 2 < radius**2
        image[mask] = 170
        amap = (0.08 * rng.random((size, size))).astype(np.float32)
        amap[mask] += 0.55 + 0.05 * z / depth
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        slices.append(
            ReviewSample(
                sample_id=f"{volume_id}-{z:03d}",
                category="lung_ct",
                score=float(amap.max()),
                label=int(mask.any()),
                image=np.repeat(pixels[..., None], 3, axis=2),
                anomaly_map=amap,
                mask=mask,
                volume_id=volume_id,
                slice_index=z,
                intensity="window -600/1500",
            )
        )
    return slices


def all_artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file path of a run, recursively."""
    out: list[str] = []
    for info in client.list_artifacts(run_id, path):
        out.extend(all_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return out
