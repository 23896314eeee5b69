"""Helpers: a tiny on-disk dataset in the official meta.json format and a tiny-backbone config for engine tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

TINY_OVERRIDES = [
    "backbone.model_name=medzsad-tiny-fast",
    "backbone.pretrained=null",
    "method_config.image_size=224",
    "tracking.enabled=false",
    "device=cpu",
]


def _texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    base = rng.normal(128, 20, (size, size, 3))
    stripes = 30 * np.sin(np.arange(size) / 3.0)[None, :, None]
    return np.clip(base + stripes, 0, 255).astype(np.uint8)


def write_dataset(root: Path, n_good: int = 4, n_bad: int = 4, categories=("wood", "tile"), seed: int = 0) -> Path:
    """MVTec-like folders plus a meta.json listing them (official schema); returns the manifest path."""
    rng = np.random.default_rng(seed)
    meta: dict = {"train": {}, "test": {}}
    for category in categories:
        records = []
        for i in range(n_good + n_bad):
            anomalous = i >= n_good
            specie = "crack" if anomalous else "good"
            image = _texture(rng)
            rel_img = f"{category}/test/{specie}/{i:03d}.png"
            rel_mask = ""
            if anomalous:
                mask = np.zeros(image.shape[:2], dtype=np.uint8)
                r, c = rng.integers(10, 60, size=2)
                mask[r : r + 20, c : c + 25] = 255
                image[mask > 0] = [20, 20, 20]
                rel_mask = f"{category}/ground_truth/{specie}/{i:03d}_mask.png"
                (root / rel_mask).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / rel_mask)
            (root / rel_img).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel_img)
            records.append(
                {
                    "img_path": rel_img,
                    "mask_path": rel_mask,
                    "cls_name": category,
                    "specie_name": specie,
                    "anomaly": int(anomalous),
                }
            )
        meta["test"][category] = records
    path = root / "meta.json"
    path.write_text(json.dumps(meta))
    return path
