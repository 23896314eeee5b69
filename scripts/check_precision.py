"""How far reduced precision (bf16/fp16 autocast) moves scores and metrics, against fp32.

Evaluates every learned method twice on a generated dataset (the tiny random backbone by default) and
prints the largest image-score difference and the change of every mean metric.

    python scripts/check_precision.py                  # bf16 on this machine's default device
    python scripts/check_precision.py --precision fp16 --overrides backbone.model_name=ViT-L-14-336
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
from engine_helpers import TINY_OVERRIDES, write_dataset

from medzsad.engine.checkpoints import save_checkpoint
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config
from medzsad.engine.runtime import build_method


def evaluate(method: str, manifest: Path, workdir: Path, precision: str, overrides: list[str]):
    config = load_config(
        None,
        [
            *TINY_OVERRIDES,
            *overrides,
            f"method={method}",
            f"data.test=[{manifest}]",
            f"eval.precision={precision}",
            f"eval.output_dir={workdir / precision}",
        ],
    )
    checkpoint = workdir / method
    if not checkpoint.with_suffix(".json").exists():
        torch.manual_seed(0)
        save_checkpoint(build_method(config), checkpoint)  # untrained prompts stand in for a checkpoint
    config.checkpoint = f"{checkpoint}.safetensors"
    (result,) = evaluate_config(config, quiet=True).values()
    return np.array([s.score for s in result.samples]), dict(result.report.macro_mean.values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--methods", nargs="+", default=["anomalyclip", "faprompt", "cops"])
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides, e.g. device=cuda")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="medzsad-precision-"))
    manifest = write_dataset(workdir / "data", n_good=6, n_bad=6)
    for method in args.methods:
        scores32, metrics32 = evaluate(method, manifest, workdir, "fp32", args.overrides)
        scores_low, metrics_low = evaluate(method, manifest, workdir, args.precision, args.overrides)
        changes = ", ".join(f"{k} {abs(metrics32[k] - metrics_low[k]):.1e}" for k in metrics32)
        print(f"{method}: max |Δ score| {np.abs(scores32 - scores_low).max():.1e}; |Δ mean metric|: {changes}")


if __name__ == "__main__":
    main()
