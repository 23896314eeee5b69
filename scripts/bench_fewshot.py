"""Few-shot mode against zero-shot, in one run: image/pixel AUROC, AU-PRO and the added time per image.

1. Generated textures (two categories, one bank per category as the few-shot literature does): prompts
   are trained for a few epochs on a generated auxiliary set with the tiny random backbone (as
   ``scripts/check_precision.py`` does), then each category's test set is evaluated zero-shot and with
   k = 1, 2, 4, 8 normal references from its own train split.
2. The real NRRD brain MRIs of ``../shared/data/radiomics-samples``: k evenly spaced normal slices of one
   scan are the references for the other scan (both directions), with the same checkpoint.

The added time per image is measured on one batch of 8 target images: the zero-shot method and its
few-shot wrapper are timed alternately, 5 times each, in CPU time of this process (all its threads;
on a GPU, wall time after synchronising), and the difference of the fastest runs is divided by 8.
CPU time, unlike wall time, does not grow when other jobs take the shared cores. Bank building is
timed separately, once, in wall time.

    python scripts/bench_fewshot.py          # AnomalyCLIP: ~4 CPU-minutes (13 to 60 min wall on 2 shared cores)
    python scripts/bench_fewshot.py --methods anomalyclip clip --overrides device=cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_precision import TINY_BACKBONE, generated_set, train_checkpoint

from medzsad.data.manifest import Manifest, read_manifest, write_manifest
from medzsad.data.prepare import prepare_mvtec, prepare_volumes
from medzsad.data.synthetic import make_mvtec_like
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config, open_dataset
from medzsad.engine.references import with_references
from medzsad.engine.runtime import build_method, resolve_device

SHOTS = (0, 1, 2, 4, 8)  # 0 = zero-shot, no reference
VOLUMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiomics-samples"


def added_seconds_per_image(method, images: torch.Tensor, repeats: int = 5) -> float:
    """(fastest few-shot predict - fastest zero-shot predict) / images, timed alternately (CPU time)."""
    cuda = images.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    times: dict[str, list[float]] = {"zero": [], "few": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for key, model in (("zero", method.method), ("few", method)):
                started = clock()
                model.predict(images)
                if cuda:
                    torch.cuda.synchronize()
                times[key].append(clock() - started)
    return (min(times["few"]) - min(times["zero"])) / len(images)


def measure(overrides: list[str], target: Path, reference: Path | None, k: int, workdir: Path) -> dict[str, float]:
    """Evaluate one target; with ``k`` references from ``reference`` when ``k > 0``."""
    few = [f"reference={reference}", f"fewshot.k={k}", f"fewshot.bank_dir={workdir / 'banks'}"] if k else []
    config = load_config(None, [*overrides, f"data.test=[{target}]", f"eval.output_dir={workdir / f'k{k}'}", *few])
    method = build_method(config)
    started = time.perf_counter()
    if k:
        source = dataclasses.replace(config, data=dataclasses.replace(config.data, split=config.fewshot.split))
        device = resolve_device(config.device)
        method = with_references(
            method, config, device, lambda: open_dataset(str(reference), source, method.image_size), lambda _: None
        )
    bank_s = time.perf_counter() - started
    (result,) = evaluate_config(config, method=method, quiet=True).values()
    values = result.report.macro_mean.values
    added = 0.0
    if k:
        dataset = open_dataset(target, config, method.image_size)
        images = torch.stack([dataset[i].image for i in range(8)]).to(resolve_device(config.device))
        added = added_seconds_per_image(method, images)
    aupro = next(key for key in values if key.startswith("pixel_aupro") and "cflow" not in key)
    return {
        "image_auroc": values["image_auroc"],
        "pixel_auroc": values.get("pixel_auroc", float("nan")),
        "aupro": values.get(aupro, float("nan")),
        "added_s": added,
        "bank_s": bank_s,
        "patches": float(len(method.bank)) if k else 0.0,
    }


def print_rows(title: str, rows: dict[int, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("| k | image AUROC | pixel AUROC | AU-PRO@0.3 | added CPU ms/image | bank build s | bank patches/layer |")
    print("|---|---|---|---|---|---|---|")
    for k, row in rows.items():
        added = "–" if k == 0 else f"{1000 * row['added_s']:+.1f}"
        bank = "–" if k == 0 else f"{row['bank_s']:.1f}"
        patches = "–" if k == 0 else f"{row['patches']:.0f}"
        print(
            f"| {'zero-shot' if k == 0 else k} | {row['image_auroc']:.3f} | {row['pixel_auroc']:.3f} | "
            f"{row['aupro']:.3f} | {added} | {bank} | {patches} |",
            flush=True,
        )


def generated_targets(root: Path, test_images: int, seed: int) -> dict[str, Path]:
    """Per category a manifest with 8 normal train images (the references) and a labelled test split."""
    defect_each = test_images // 4
    make_mvtec_like(
        root, n_train=max(SHOTS), n_test_good=test_images - 2 * defect_each, n_test_defect=defect_each, seed=seed
    )
    targets = {}
    for name in ("weave", "grain"):
        prepare_mvtec(root, root / f"{name}.json", categories=[name])
        targets[name] = root / f"{name}.json"
    return targets


def volume_manifests(workdir: Path) -> dict[str, Path]:
    """brain1 and brain2 as slice manifests (slices with lesion voxels abnormal, the label as mask)."""
    out = {}
    for case in ("brain1", "brain2"):
        folder = workdir / case
        folder.mkdir(parents=True, exist_ok=True)
        for kind in ("image", "label"):
            shutil.copy(VOLUMES / f"{case}_{kind}.nrrd", folder / f"{case}_{kind}.nrrd")
        prepare_volumes(folder, folder / "meta.json", category="brain")
        out[case] = folder / "meta.json"
    return out


def slice_references(manifest: Path, k: int) -> Path:
    """A manifest (train split) of ``k`` evenly spaced normal slices of the scan ``manifest`` lists."""
    normal = [r for r in read_manifest(manifest).records("test") if not r.anomaly]
    chosen = (
        [normal[round(i * (len(normal) - 1) / max(1, k - 1))] for i in range(k)]
        if k > 1
        else [normal[len(normal) // 2]]
    )
    references = Manifest()
    for record in chosen:
        references.add("train", record)
    return write_manifest(references, manifest.parent / f"references_{k}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["anomalyclip"])
    parser.add_argument("--aux-images", type=int, default=16, help="generated training images per category")
    parser.add_argument("--test-images", type=int, default=40, help="generated test images per category")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides, e.g. device=cuda")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="medzsad-fewshot-"))
    print(f"torch threads {torch.get_num_threads()}; overrides: {' '.join(args.overrides) or 'none'}; {workdir}")
    aux = generated_set(workdir / "aux", args.aux_images, seed=1)
    targets = generated_targets(workdir / "gen", args.test_images, seed=2)
    volumes = volume_manifests(workdir / "volumes") if VOLUMES.is_dir() else {}
    for method in args.methods:
        overrides = [*TINY_BACKBONE, *args.overrides, f"method={method}", "eval.batch_size=8"]
        if method in ("anomalyclip", "faprompt", "cops"):
            started = time.perf_counter()
            checkpoint = train_checkpoint(method, aux, workdir, args.epochs, args.overrides)
            overrides.append(f"checkpoint={checkpoint}")
            print(f"\n{method}: prompts trained {args.epochs} epochs in {time.perf_counter() - started:.0f} s")
        for name, target in targets.items():
            rows = {k: measure(overrides, target, target, k, workdir / method / name) for k in SHOTS}
            print_rows(f"{method}, generated '{name}' ({args.test_images} test images; references: train/good)", rows)
        for target, source in (("brain2", "brain1"), ("brain1", "brain2")):
            if not volumes:
                print("\n../shared/data is absent: the real-volume part is skipped")
                break
            rows = {}
            for k in SHOTS:
                reference = slice_references(volumes[source], k) if k else None
                rows[k] = measure(overrides, volumes[target], reference, k, workdir / method / target / f"r{k}")
            print_rows(f"{method}, real NRRD {target} (all slices), references: k normal slices of {source}", rows)


if __name__ == "__main__":
    main()
