"""Measure how closely each method's ONNX export reproduces PyTorch (fp32, CPU, tiny backbone, 224 px).

For every registered method and baseline: export once (timed), then score the same structured
batches with the PyTorch graph and with onnxruntime, at batch sizes 1 and 3 (the graph is traced with
2), and print the largest absolute differences of scores and maps. A last row does the same for
AnomalyCLIP in few-shot mode (a bank of two structured references folded into the graph). These are
the numbers behind the 1e-4 tolerance of ``tests/deploy/test_deploy_onnx_parity.py``.

    python scripts/check_export.py
    python scripts/check_export.py --methods cops faprompt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medzsad.backbone.clip import BackboneConfig, ClipBackbone
from medzsad.deploy.detector import torch_score_fn
from medzsad.deploy.export import export_onnx
from medzsad.deploy.onnx_runtime import OnnxModel
from medzsad.methods.memory import FewShotConfig, FewShotMethod, collect_bank
from medzsad.methods.registry import METHODS


def structured(count: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (count, 3, size, size)).astype(np.float32)
    images += np.sin(np.arange(size) / 5.0)[None, None, None, :].astype(np.float32)
    images[:, :, 40:90, 60:120] -= 2.0
    return torch.from_numpy(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-fewshot", action="store_true", help="skip the few-shot row")
    args = parser.parse_args()
    backbone = ClipBackbone.from_config(BackboneConfig(model_name="medzsad-tiny-fast", pretrained=None))
    print("| method | export s | max abs diff scores | max abs diff maps | ONNX MB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods:
            cls = METHODS[name]
            torch.manual_seed(0)
            row(name, cls(backbone, cls.config_class(image_size=args.size)), Path(tmp), args.size)
        if not args.no_fewshot:
            torch.manual_seed(0)
            base = METHODS["anomalyclip"](backbone, METHODS["anomalyclip"].config_class(image_size=args.size))
            config = FewShotConfig(k=2)
            bank = collect_bank(base, [structured(2, args.size, seed=7)], config, {"k": "2"})
            row("anomalyclip few-shot (k=2)", FewShotMethod(base, bank, config), Path(tmp), args.size)


def row(name: str, method, folder: Path, size: int) -> None:
    """Export ``method``, compare onnxruntime with PyTorch at batch sizes 1 and 3, print one table row."""
    start = time.perf_counter()
    result = export_onnx(method, folder / f"{name.split()[0]}.onnx")
    seconds = time.perf_counter() - start
    reference, model = torch_score_fn(method), OnnxModel(result.path)
    worst = {"scores": 0.0, "maps": 0.0}
    for batch in (1, 3):
        images = structured(batch, size, seed=batch)
        for key, got, expected in zip(worst, model(images), reference(images)):
            worst[key] = max(worst[key], float(np.abs(got - expected).max()))
    size_mb = result.path.stat().st_size / 1e6
    print(f"| {name} | {seconds:.0f} | {worst['scores']:.1e} | {worst['maps']:.1e} | {size_mb:.1f} |", flush=True)


if __name__ == "__main__":
    main()
