"""End to end on a generated dataset with a tiny random backbone: train, resume, test, predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TINY_OVERRIDES
from PIL import Image
from safetensors.torch import load_file

from medzsad.cli.main import main
from medzsad.engine.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config, run_train
from medzsad.engine.runtime import build_backbone, build_method
from medzsad.metrics import MetricAccumulator


def train_config(dataset: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            *TINY_OVERRIDES,
            f"data.train={dataset}",
            f"train.output_dir={out}",
            "train.epochs=2",
            "train.batch_size=4",
            "train.max_steps_per_epoch=2",
            *extra,
        ],
    )


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("method", "precision"),
    [("anomalyclip", "fp32"), ("faprompt", "fp32"), ("cops", "fp32"), ("anomalyclip", "fp16")],
)
def test_resume_after_interruption_gives_identical_prompts(tiny_dataset, tmp_path, method, precision):
    # fp16 also checks that the loss scaler's state travels through state.pt.
    options = (f"method={method}", f"train.precision={precision}")
    straight = run_train(train_config(tiny_dataset, tmp_path / "straight", *options))
    assert len(straight.history) == 2

    config = train_config(tiny_dataset, tmp_path / "resumed", *options)

    def crash_after_first_epoch(epoch, losses):
        if epoch == 1:
            raise Crash

    import medzsad.engine.jobs as jobs

    original = jobs.train

    def train_with_crash(method, dataset, cfg, device, on_epoch=None, extra=None, **state):
        return original(method, dataset, cfg, device, crash_after_first_epoch, extra, **state)

    jobs.train = train_with_crash
    try:
        with pytest.raises(Crash):
            run_train(config)
    finally:
        jobs.train = original
    assert (tmp_path / "resumed" / "epoch_1.safetensors").is_file()
    assert not (tmp_path / "resumed" / "epoch_2.safetensors").exists()
    resumed = run_train(config)
    assert resumed.resumed_from_epoch == 1
    a = load_file(tmp_path / "straight" / "epoch_2.safetensors")
    b = load_file(tmp_path / "resumed" / "epoch_2.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight.history == resumed.history


def test_training_changes_the_prompts_and_records_provenance(tiny_dataset, tmp_path):
    result = run_train(train_config(tiny_dataset, tmp_path / "t", "train.epochs=1"))
    meta = json.loads((tmp_path / "t" / "epoch_1.json").read_text())
    assert meta["method"] == "anomalyclip"
    assert meta["backbone"]["backbone"] == "medzsad-tiny-fast"
    assert meta["training"]["epoch"] == 1 and meta["training"]["aux_data"]
    assert set(result.history[0]) >= {"total", "image_ce", "focal", "dice_abnormal", "dice_normal"}


def test_fp16_training_scales_the_loss_and_keeps_gradients_finite(tiny_dataset, tmp_path):
    # fp16 activations need loss scaling; the scaler's state is saved for resume. fp32 and bf16 save a
    # disabled scaler (an empty state).
    fp16 = ("train.precision=fp16", "train.epochs=1", "train.max_steps_per_epoch=4")
    result = run_train(train_config(tiny_dataset, tmp_path / "fp16", *fp16))
    assert all(np.isfinite(value) for value in result.history[0].values())
    state = torch.load(tmp_path / "fp16" / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] >= 2.0**8  # at most two of the four steps overflowed and were skipped
    config = load_config(None, TINY_OVERRIDES)
    torch.manual_seed(config.train.seed)  # the initialisation run_train starts from
    initial = build_method(config).prompt.state_dict()
    trained = load_file(tmp_path / "fp16" / "epoch_1.safetensors")
    assert trained.keys() == initial.keys()
    assert all(not torch.equal(trained[k], initial[k]) for k in trained)
    run_train(train_config(tiny_dataset, tmp_path / "fp32", "train.epochs=1"))
    assert torch.load(tmp_path / "fp32" / "state.pt", weights_only=True)["scaler"] == {}


def test_checkpoint_round_trip_and_refusals(tmp_path):
    config = load_config(None, TINY_OVERRIDES)
    backbone = build_backbone(config)
    torch.manual_seed(0)
    method = build_method(config, backbone)
    save_checkpoint(method, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt.safetensors", backbone, "anomalyclip")
    for (k, v), (k2, v2) in zip(method.prompt.state_dict().items(), loaded.prompt.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(CheckpointError, match="for method 'anomalyclip', not 'cops'"):
        load_checkpoint(tmp_path / "ckpt", backbone, "cops")
    other = build_backbone(load_config(None, [*TINY_OVERRIDES, "backbone.seed=5"]))
    with pytest.raises(CheckpointError, match="backbone weights"):
        load_checkpoint(tmp_path / "ckpt", other)
    (tmp_path / "ckpt.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a medzsad checkpoint"):
        load_checkpoint(tmp_path / "ckpt", backbone)


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    run_train(train_config(tiny_dataset, out, "train.epochs=1"))
    return out / "epoch_1.safetensors"


def test_test_command_table_equals_direct_metrics(tiny_dataset, trained, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        ["test", *TINY_OVERRIDES, f"checkpoint={trained}", f"data.test=[aux={tiny_dataset}]", f"eval.output_dir={out}"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and "pixel_aupro" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    table = {(r["dataset"], r["category"]): r for r in rows}

    # Recompute directly: the model on every image, medzsad.metrics on the maps at 224 px.
    config = load_config(None, [*TINY_OVERRIDES, f"checkpoint={trained}", f"data.test=[{tiny_dataset}]"])
    method = build_method(config).eval()
    from medzsad.engine.jobs import open_dataset

    dataset = open_dataset(tiny_dataset, config, 224)
    accumulator = MetricAccumulator()
    for i in range(len(dataset)):
        sample = dataset[i]
        with torch.no_grad():
            out_i = method.predict(sample.image[None])
        accumulator.update(
            sample.category,
            scores=out_i.image_scores.numpy(),
            labels=[sample.label],
            maps=out_i.anomaly_maps.numpy(),
            masks=sample.mask[None].numpy(),
        )
    report = accumulator.compute()
    # metrics.csv holds percent (the terminal's unit, named in the header) with 6 decimals.
    for category, metrics in report.per_category.items():
        for name, value in metrics.values.items():
            assert float(table[("aux", category)][f"{name} [%]"]) == pytest.approx(100 * value, abs=1e-5), name
        assert int(table[("aux", category)]["images"]) == metrics.counts["images"]
    for name, value in report.macro_mean.values.items():
        assert float(table[("aux", "mean")][f"{name} [%]"]) == pytest.approx(100 * value, abs=1e-5), name


def test_predict_on_a_folder_of_pngs(trained, tmp_path, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    sizes = [(60, 80), (120, 90), (64, 64)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"s{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred"
    code = main(["predict", "-i", str(folder), "-o", str(out), *TINY_OVERRIDES, f"checkpoint={trained}"])
    captured = capsys.readouterr()
    assert code == 1  # one input could not be read
    assert "broken.png" in captured.out and captured.out.count("skipped:") == 1
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 3
    index = list(csv.DictReader((out / "sample_index.local.csv").open()))
    by_source = {Path(r["source"]).name: r["sample_id"] for r in index}
    for i, (h, w) in enumerate(sizes):
        sample_id = by_source[f"s{i}.png"]
        data = np.load(out / "maps" / f"{sample_id}.npz")
        assert data["anomaly_map"].shape == (h, w) and data["anomaly_map"].dtype == np.float32
        # The image at its own size, a caption strip above (18 px) and a colour bar beneath (34 px).
        assert Image.open(out / "overlays" / f"{sample_id}.png").size == (max(w, 160), h + 18 + 34)
        score = next(float(r["score"]) for r in rows if r["sample_id"] == sample_id)
        assert 0.0 <= score <= 1.0 and score == pytest.approx(float(data["score"]), abs=1e-6)
    assert all("s0" not in r["sample_id"] for r in rows)  # ids are pseudonymous


def test_predict_refuses_an_untrained_learned_method(tmp_path, capsys):
    code = main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), *TINY_OVERRIDES])
    assert code == 2
    assert "give a trained checkpoint" in capsys.readouterr().err


def test_predict_with_a_checkpoint_of_another_method_is_one_clear_line(trained, tmp_path, capsys):
    code = main(["predict", "-i", str(tmp_path), *TINY_OVERRIDES, "method=cops", f"checkpoint={trained}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not 'cops'" in err


def test_evaluate_config_is_callable_from_python(tiny_dataset, trained, tmp_path):
    config = load_config(
        None, [*TINY_OVERRIDES, f"checkpoint={trained}", f"data.test=[{tiny_dataset}]", f"eval.output_dir={tmp_path}"]
    )
    results = evaluate_config(config, quiet=True)
    (name,) = results
    assert len(results[name].samples) == 16
    assert set(results[name].report.per_category) == {"wood", "tile"}


def test_evaluation_with_loader_workers_equals_the_main_process(tiny_dataset, trained, tmp_path):
    def scores_and_metrics(workers: int):
        config = load_config(
            None,
            [
                *TINY_OVERRIDES,
                f"checkpoint={trained}",
                f"data.test=[{tiny_dataset}]",
                f"eval.output_dir={tmp_path / str(workers)}",
                f"eval.num_workers={workers}",
                "eval.batch_size=3",  # batches that straddle categories and a short last batch
            ],
        )
        (result,) = evaluate_config(config, quiet=True).values()
        return [(s.sample_id, s.score) for s in result.samples], result.report.macro_mean.values

    assert scores_and_metrics(2) == scores_and_metrics(0)


def test_training_with_loader_workers_equals_the_main_process(tiny_dataset, tmp_path):
    for workers in (0, 2):
        run_train(train_config(tiny_dataset, tmp_path / str(workers), "train.epochs=1", f"train.num_workers={workers}"))
    a, b = (load_file(tmp_path / str(w) / "epoch_1.safetensors") for w in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_constant_memory_pixel_metrics_match_the_exact_ones_closely(tiny_dataset, trained, tmp_path, capsys):
    def mean_metrics(*extra: str):
        run = [f"checkpoint={trained}", f"data.test=[{tiny_dataset}]", f"eval.output_dir={tmp_path / str(extra)}"]
        config = load_config(None, [*TINY_OVERRIDES, *run, *extra])
        (result,) = evaluate_config(config).values()
        return result.report.macro_mean.values

    exact = mean_metrics()
    binned = mean_metrics("eval.pixel_bins=65536")
    assert "maps quantized to 65536 levels" in capsys.readouterr().out
    assert "pixel_aupro@0.3[mvtec-exact]" not in binned
    assert abs(binned["pixel_aupro@0.3[mvtec-binned65536]"] - exact["pixel_aupro@0.3[mvtec-exact]"]) < 1e-3
    for key in ("pixel_auroc", "pixel_ap", "image_auroc", "dice@0.5"):
        assert abs(binned[key] - exact[key]) < 1e-3, key
    assert binned["image_auroc"] == exact["image_auroc"]  # image metrics are never binned
