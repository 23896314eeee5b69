"""Realised false-alarm rate of the conformal threshold against alpha, on fresh normal scans.

For each alpha, many random splits of a pool of normal scores into a reference set (``n``) and fresh
normals: the threshold comes from the reference set (``medzsad.metrics.calibration.conformal_threshold``),
the false-alarm rate is measured on the fresh normals. Printed per alpha: the mean rate with its standard
error, what theory says for continuous scores (``(n + 1 - k) / (n + 1)``), and the fraction of reference
sets whose own rate exceeds alpha (what ``calibrate.confidence`` bounds).

Score sources:

* ``beta``: generated continuous scores, beta(2, 5); the rate of each threshold is exact (beta survival
  function), so "sets above alpha" has no measurement noise;
* ``tied``: the same rounded to 2 decimals (many ties, as a saturated score gives), rate measured on
  20000 fresh scores;
* ``model``: image scores of the tiny random-weight CLIP (AnomalyCLIP prompts) on generated normal
  textures, through the real evaluation loop;
* ``shift``: reference from beta(2, 5), exact rate under beta(2.6, 5) (another scanner): the guarantee
  assumes exchangeability, and this shows how it breaks.

    python scripts/check_calibration.py                   # all sources, alphas 0.01 0.05 0.1 0.2
    python scripts/check_calibration.py --sources beta --n 50 200 --splits 2000
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta as beta_dist

from medzsad.metrics.calibration import conformal_rank, conformal_threshold

ALPHAS = (0.01, 0.05, 0.1, 0.2)


def realised_rates(
    reference_pool: np.ndarray | Callable[[int], np.ndarray],
    true_rate: Callable[[float], float] | None,
    n: int,
    alpha: float,
    splits: int,
    rng: np.random.Generator,
    confidence: float | None = None,
) -> np.ndarray:
    """False-alarm rate of each split's threshold. A pool of scores is shuffled and cut into ``n`` reference
    scores and fresh normals (the rate measured on those); a generator ``draw(n)`` gives reference scores
    and ``true_rate(t)`` the exact rate of the fresh normals' distribution (no measurement noise)."""
    rates = np.empty(splits)
    for i in range(splits):
        if callable(reference_pool):
            threshold = conformal_threshold(reference_pool(n), alpha, confidence)
            rates[i] = true_rate(threshold)
        else:
            pool = rng.permutation(reference_pool)
            rates[i] = np.mean(pool[n:] >= conformal_threshold(pool[:n], alpha, confidence))
    return rates


def model_scores(count: int, seed: int = 0) -> np.ndarray:
    """Image scores of ``count`` generated normal textures through `medzsad test` (tiny random CLIP)."""
    import torch

    from medzsad.data.prepare import prepare_mvtec
    from medzsad.data.synthetic import make_mvtec_like
    from medzsad.engine.checkpoints import save_checkpoint
    from medzsad.engine.config import load_config
    from medzsad.engine.jobs import evaluate_config
    from medzsad.engine.runtime import build_method

    tiny = [
        "backbone.model_name=medzsad-tiny-fast",
        "backbone.pretrained=null",
        "method_config.image_size=224",
        "tracking.enabled=false",
    ]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_mvtec_like(root / "data", categories=("weave",), n_train=0, n_test_good=count, n_test_defect=1, seed=seed)
        prepare_mvtec(root / "data", root / "data" / "meta.json")
        torch.manual_seed(seed)
        save_checkpoint(build_method(load_config(None, tiny)), root / "prompts")
        config = load_config(
            None,
            [*tiny, f"checkpoint={root / 'prompts.safetensors'}", f"data.test=[{root / 'data' / 'meta.json'}]"],
        )
        config.eval.output_dir = str(root / "eval")
        config.eval.pixel_metrics = False
        (result,) = evaluate_config(config, quiet=True).values()
    return np.asarray([s.score for s in result.samples if s.label == 0])


def report(name: str, pool: Any, fresh: Any, n: int, splits: int, rng: np.random.Generator) -> None:
    for alpha in ALPHAS:
        try:
            k = conformal_rank(n, alpha)
        except ValueError:
            print(f"{name:6s} n={n:4d} alpha={alpha:<5} too few reference scans (need {math.ceil(1 / alpha - 1)})")
            continue
        rates = realised_rates(pool, fresh, n, alpha, splits, rng)
        error = rates.std(ddof=1) / math.sqrt(splits)
        line = (
            f"{name:6s} n={n:4d} alpha={alpha:<5} realised {rates.mean():.4f} ± {error:.4f}"
            f"  theory {(n + 1 - k) / (n + 1):.4f}  sets above alpha {np.mean(rates > alpha):.2f}"
        )
        try:
            conditional = realised_rates(pool, fresh, n, alpha, splits, rng, confidence=0.9)
            line += f"  | confidence=0.9: realised {conditional.mean():.4f}, above {np.mean(conditional > alpha):.2f}"
        except ValueError:
            line += "  | confidence=0.9: too few reference scans"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["beta", "tied", "model", "shift"])
    parser.add_argument("--n", nargs="+", type=int, default=[50, 200], help="reference set sizes")
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--model-images", type=int, default=400, help="generated normals scored by the model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    scores = model_scores(args.model_images, args.seed) if "model" in args.sources else None
    if scores is not None:
        print(f"model: image scores of {scores.size} generated normals, {np.unique(scores).size} distinct values")
    for source in args.sources:
        for n in args.n:
            if source == "beta":
                report(source, lambda k: rng.beta(2, 5, k), lambda t: beta_dist.sf(t, 2, 5), n, args.splits, rng)
            elif source == "tied":
                report(source, np.round(rng.beta(2, 5, n + 20000), 2), None, n, args.splits, rng)
            elif source == "shift":
                report(source, lambda k: rng.beta(2, 5, k), lambda t: beta_dist.sf(t, 2.6, 5), n, args.splits, rng)
            elif source == "model":
                if n >= args.model_images:
                    print(f"model  n={n}: skipped (only {args.model_images} scored images; raise --model-images)")
                    continue
                report(source, scores, None, n, args.splits, rng)
            else:
                parser.error(f"unknown source {source!r}")


if __name__ == "__main__":
    main()
