"""How far reduced precision (bf16/fp16 in the backbone's transformer blocks) moves scores and metrics.

Untrained prompts on random weights give nearly tied image scores, which any perturbation reorders;
that says nothing about ranking stability. So the script first *trains* each method's prompts for a
few epochs on a generated auxiliary set (the tiny random backbone by default), then evaluates the
checkpoint in fp32 and in reduced precision on a separate, larger generated set and prints:

* the spread of the fp32 image scores (standard deviation) next to the largest score change,
* how many normal/anomalous pairs swap order, and the image AUROC change that follows,
* the change of every mean metric (pixel AUROC, AU-PRO, ...).

    python scripts/check_precision.py                         # bf16, this machine's default device
    python scripts/check_precision.py --precision fp16 --overrides device=cuda
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medzsad.data.prepare import prepare_mvtec
from medzsad.data.synthetic import make_mvtec_like
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config, run_train

TINY_BACKBONE = [
    "backbone.model_name=medzsad-tiny-fast",
    "backbone.pretrained=null",
    "method_config.image_size=224",
    "tracking.enabled=false",
]


@dataclass
class Drift:
    """fp32 against reduced precision on one evaluation set."""

    method: str
    image_auroc: float  # fp32 macro-mean image AUROC, for context
    score_std: float  # spread of the fp32 image scores
    max_score_diff: float
    swapped_pairs: int  # (normal, anomalous) pairs, pooled over categories, ordered differently
    pairs: int
    metric_diffs: dict[str, float]  # |Δ| of every macro-mean metric, image_auroc included


def generated_set(root: Path, images_per_category: int, seed: int) -> Path:
    """Two texture categories, half normal and half with painted defects (blob, scratch); a meta.json."""
    defect_each = images_per_category // 4
    make_mvtec_like(
        root,
        n_train=0,
        n_test_good=images_per_category - 2 * defect_each,
        n_test_defect=defect_each,
        seed=seed,
    )
    prepare_mvtec(root, root / "meta.json")
    return root / "meta.json"


def swapped_pairs(labels: np.ndarray, reference: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """Pairs (normal i, anomalous j) ordered differently by the two score vectors, and all such pairs."""
    normal, anomalous = labels == 0, labels == 1
    order_ref = np.sign(reference[anomalous][None, :] - reference[normal][:, None])
    order_other = np.sign(other[anomalous][None, :] - other[normal][:, None])
    return int((order_ref != order_other).sum()), int(order_ref.size)


def train_checkpoint(method: str, aux: Path, workdir: Path, epochs: int, overrides: list[str]) -> str:
    config = load_config(
        None,
        [
            *TINY_BACKBONE,
            *overrides,
            f"method={method}",
            f"data.train={aux}",
            f"train.output_dir={workdir / 'train' / method}",
            f"train.epochs={epochs}",
            "train.batch_size=8",
        ],
    )
    return f"{run_train(config).last_checkpoint}.safetensors"


def evaluate(method: str, checkpoint: str, test_set: Path, workdir: Path, precision: str, overrides: list[str]):
    config = load_config(
        None,
        [
            *TINY_BACKBONE,
            *overrides,
            f"method={method}",
            f"checkpoint={checkpoint}",
            f"data.test=[{test_set}]",
            f"eval.precision={precision}",
            "eval.batch_size=16",
            f"eval.output_dir={workdir / 'eval' / method / precision}",
        ],
    )
    (result,) = evaluate_config(config, quiet=True).values()
    scores = np.array([s.score for s in result.samples])
    labels = np.array([s.label for s in result.samples])
    return scores, labels, dict(result.report.macro_mean.values)


def precision_drift(
    method: str, precision: str, workdir: Path, *, aux_images: int, test_images: int, epochs: int, overrides: list[str]
) -> Drift:
    """Train ``method`` on a generated set, evaluate in fp32 and ``precision`` on another; compare."""
    aux = generated_set(workdir / "aux", aux_images, seed=1)
    test_set = generated_set(workdir / "test", test_images, seed=2)
    checkpoint = train_checkpoint(method, aux, workdir, epochs, overrides)
    scores32, labels, metrics32 = evaluate(method, checkpoint, test_set, workdir, "fp32", overrides)
    scores_low, _, metrics_low = evaluate(method, checkpoint, test_set, workdir, precision, overrides)
    swapped, pairs = swapped_pairs(labels, scores32, scores_low)
    return Drift(
        method=method,
        image_auroc=float(metrics32["image_auroc"]),
        score_std=float(scores32.std()),
        max_score_diff=float(np.abs(scores32 - scores_low).max()),
        swapped_pairs=swapped,
        pairs=pairs,
        metric_diffs={k: abs(metrics32[k] - metrics_low[k]) for k in metrics32},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--methods", nargs="+", default=["anomalyclip", "faprompt", "cops"])
    parser.add_argument("--aux-images", type=int, default=24, help="generated training images per category")
    parser.add_argument("--test-images", type=int, default=120, help="generated evaluation images per category")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides, e.g. device=cuda")
    args = parser.parse_args()
    print(
        f"{args.precision} vs fp32; prompts trained {args.epochs} epochs on {2 * args.aux_images} generated images, "
        f"evaluated on {2 * args.test_images} others; overrides: {' '.join(args.overrides) or 'none'}"
    )
    for method in args.methods:
        workdir = Path(tempfile.mkdtemp(prefix=f"medzsad-precision-{method}-"))
        drift = precision_drift(
            method,
            args.precision,
            workdir,
            aux_images=args.aux_images,
            test_images=args.test_images,
            epochs=args.epochs,
            overrides=args.overrides,
        )
        changes = ", ".join(f"{name} {value:.1e}" for name, value in drift.metric_diffs.items())
        print(
            f"{method}: fp32 image AUROC {drift.image_auroc:.3f}, score std {drift.score_std:.2e}, "
            f"max |Δ score| {drift.max_score_diff:.1e}, "
            f"{drift.swapped_pairs}/{drift.pairs} pairs swapped; |Δ mean metric|: {changes}",
            flush=True,
        )


if __name__ == "__main__":
    main()
