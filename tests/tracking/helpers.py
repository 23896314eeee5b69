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

CONFIG_DICT = {
    "seed": 111,
    "method": {"name": "anomalyclip", "prompt_length": 12, "depth": 9, "features": [6, 12, 18, 24]},
    "data": {"root": "/data/hospital/exports/brain", "image_size": 518, "name": "brainmri"},
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


def all_artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file path of a run, recursively."""
    out: list[str] = []
    for info in client.list_artifacts(run_id, path):
        out.extend(all_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return out
