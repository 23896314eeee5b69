"""PyTorch CPU against onnxruntime CPU for an exported method: images/s and peak memory, 224 and 518 px.

For each input size the method (random prompts on a tiny random backbone, ``medzsad-tiny``: 24 visual
blocks, patch 14, so 224 and 518 px both tile) is exported once with :func:`medzsad.deploy.export_onnx`;
then two fresh processes score the same batches, one with the PyTorch graph (``Detector``'s scoring
function) and one with onnxruntime that imports neither torch nor onnx (the deployment install). Each
reports images/s over timed batches after one warm-up batch and its peak resident memory (VmHWM of the
process itself, model and runtime included: ``ru_maxrss`` would also count the parent's memory at
fork). Both use the same number of threads.

    python scripts/bench_export.py                     # anomalyclip, batches of 4, 2 threads
    python scripts/bench_export.py --method cops --batches 3 --threads 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
engine, path, size, batch, batches, threads = sys.argv[1:7]
size, batch, batches, threads = int(size), int(batch), int(batches), int(threads)
images = np.random.default_rng(0).normal(0, 1, (batch, 3, size, size)).astype(np.float32)
if engine == "onnx":
    from medzsad.deploy.onnx_runtime import OnnxModel
    model = OnnxModel(path, threads=threads)
    run = model.run
else:
    import torch
    torch.set_num_threads(threads)
    from medzsad.deploy.detector import torch_score_fn
    from medzsad.deploy.model import load_method
    score = torch_score_fn(load_method(path))
    run = lambda x: score(torch.from_numpy(x))
run(images)
start = time.perf_counter()
for _ in range(batches):
    run(images)
elapsed = time.perf_counter() - start
loaded = sorted(m for m in ("torch", "onnx") if m in sys.modules)
try:  # this process's own high-water mark; ru_maxrss also counts the parent's memory at fork (Linux)
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    peak_mb = int(status.split()[0]) / 1024
except (OSError, IndexError):
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images_per_s": batch * batches / elapsed, "peak_mb": peak_mb, "modules": loaded}))
"""


def export(method: str, size: int, folder: Path) -> tuple[Path, Path]:
    """A checkpoint of ``method`` on the tiny backbone at ``size`` px and its ONNX export."""
    import torch

    from medzsad.backbone.clip import BackboneConfig, ClipBackbone
    from medzsad.deploy.export import export_onnx
    from medzsad.engine.checkpoints import save_checkpoint
    from medzsad.methods.registry import method_class

    backbone = ClipBackbone.from_config(BackboneConfig(model_name="medzsad-tiny", pretrained=None))
    cls = method_class(method)
    torch.manual_seed(0)
    instance = cls(backbone, cls.config_class(image_size=size))
    checkpoint, _ = save_checkpoint(instance, folder / f"{method}_{size}")
    start = time.perf_counter()
    result = export_onnx(instance, folder / f"{method}_{size}.onnx")
    print(
        f"  exported {size} px in {time.perf_counter() - start:.0f} s, "
        f"{result.path.stat().st_size / 1e6:.1f} MB, |ONNX - PyTorch| max {max(result.max_abs_diff.values()):.1e}"
    )
    return checkpoint, result.path


def measure(engine: str, path: Path, size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-c", CHILD, engine, str(path), str(size), str(args.batch)]
    command += [str(args.batches), str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="anomalyclip")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.method}, medzsad-tiny backbone, batch {args.batch} x {args.batches}, {args.threads} threads")
    print("| size | PyTorch img/s | onnxruntime img/s | ratio | PyTorch peak MB | onnxruntime peak MB | ORT imports |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:  # a row as soon as it is measured
            checkpoint, onnx_path = export(args.method, size, Path(tmp))
            t = measure("torch", checkpoint, size, args)
            o = measure("onnx", onnx_path, size, args)
            ratio = o["images_per_s"] / t["images_per_s"]
            print(
                f"| {size} | {t['images_per_s']:.2f} | {o['images_per_s']:.2f} | {ratio:.2f}x | {t['peak_mb']:.0f} | "
                f"{o['peak_mb']:.0f} | {', '.join(o['modules']) or 'no torch, no onnx'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
