"""Few-shot mode end to end (``reference=``): reference selection, saved and reused banks, k = 0, the
reports of test and predict, refusals, and torchrun against one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from engine_helpers import TINY_OVERRIDES, write_dataset
from PIL import Image

from medzsad.data.datasets import FolderDataset
from medzsad.engine import references as refs
from medzsad.engine.config import ConfigError, load_config
from medzsad.engine.jobs import evaluate_config, open_dataset, run_predict
from medzsad.engine.runtime import build_method
from medzsad.methods.memory import FewShotMethod

BASE = [*TINY_OVERRIDES, "method=clip", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot")
    return {
        "target": write_dataset(root / "target", n_good=2, n_bad=2, categories=("wood",), seed=1),
        "refs": write_dataset(root / "refs", n_good=3, n_bad=1, categories=("wood",), seed=2),
        "root": root,
    }


def _config(data, tmp: Path, *extra: str, banks: Path | None = None):
    return load_config(
        None,
        [
            *BASE,
            f"data.test=[t={data['target']}]",
            f"eval.output_dir={tmp / 'out'}",
            f"fewshot.bank_dir={banks or tmp / 'banks'}",
            "fewshot.split=test",
            "eval.save_maps=true",
            *extra,
        ],
    )


def _scores(result) -> list[tuple[str, float]]:
    return [(s.sample_id, s.score) for s in result["t"].samples]


def _maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p)["anomaly_map"] for p in sorted((folder / "maps" / "t").iterdir())}


def test_references_build_save_reuse_and_report(data, tmp_path, monkeypatch):
    zero = evaluate_config(_config(data, tmp_path / "zero"), quiet=True)
    config = _config(data, tmp_path, f"reference={data['refs']}", "fewshot.k=2")
    first = evaluate_config(config, quiet=True)
    banks = list((tmp_path / "banks").glob("clip-*.safetensors"))
    assert len(banks) == 1
    bank = refs.load_bank(banks[0])
    assert bank.meta["k"] == "2" and len(bank.reference_ids) == 2 and bank.meta["method"] == "clip"
    assert bank.meta["layers"] == "2,4,6,8" and bank.meta["stream"] == "original"
    assert len(bank) == 2 * 14 * 14  # 2 normal references of 224 px, 16-px patches
    listed = (tmp_path / "out" / "references.csv").read_text().split()
    assert listed == ["reference_id", *bank.reference_ids]
    assert [s for s, _ in _scores(first)] == [s for s, _ in _scores(zero)]
    assert [v for _, v in _scores(first)] != [v for _, v in _scores(zero)]

    # A second run finds the saved bank (nothing is built) and gives the same maps.
    monkeypatch.setattr(refs, "build_bank", lambda *a, **k: pytest.fail("the saved bank was not reused"))
    again = evaluate_config(
        _config(data, tmp_path / "again", f"reference={data['refs']}", "fewshot.k=2", banks=tmp_path / "banks"),
        quiet=True,
    )
    assert _scores(again) == _scores(first)
    # The bank file named directly gives identical maps too.
    direct = evaluate_config(_config(data, tmp_path / "direct", f"reference={banks[0]}"), quiet=True)
    assert _scores(direct) == _scores(first)
    maps_first, maps_direct = _maps(tmp_path / "out"), _maps(tmp_path / "direct" / "out")
    assert maps_first.keys() == maps_direct.keys()
    assert all(np.array_equal(maps_first[name], maps_direct[name]) for name in maps_first)


def test_saved_and_reloaded_bank_gives_identical_maps(data, tmp_path):
    config = _config(data, tmp_path, f"reference={data['refs']}")
    method = build_method(config)
    dataset = open_dataset(data["refs"], config, method.image_size)
    units = refs.reference_units(dataset)
    assert len(units) == 3  # the abnormal record is never a reference
    meta = refs.expected_meta(method, config.fewshot)
    built = refs.build_bank(method, dataset, units, config.fewshot, torch.device("cpu"), 2, meta)
    loaded = refs.load_bank(refs.save_bank(built, tmp_path / "bank.safetensors"))
    assert loaded.meta == built.meta and loaded.layers == built.layers
    images = torch.stack([open_dataset(data["target"], config, 224)[i].image for i in range(4)])
    with torch.no_grad():
        one = FewShotMethod(method, built, config.fewshot).predict(images)
        two = FewShotMethod(method, loaded, config.fewshot).predict(images)
    assert torch.equal(one.anomaly_maps, two.anomaly_maps) and torch.equal(one.image_scores, two.image_scores)


def test_k0_reproduces_zero_shot_exactly(data, tmp_path):
    zero = evaluate_config(_config(data, tmp_path / "zero"), quiet=True)
    k0 = evaluate_config(_config(data, tmp_path / "k0", f"reference={data['refs']}", "fewshot.k=0"), quiet=True)
    assert _scores(k0) == _scores(zero)
    assert k0["t"].report.to_dict() == zero["t"].report.to_dict()
    maps_zero, maps_k0 = _maps(tmp_path / "zero" / "out"), _maps(tmp_path / "k0" / "out")
    assert all(np.array_equal(maps_zero[name], maps_k0[name]) for name in maps_zero)


def test_refusals_name_the_key(data, tmp_path):
    built = _config(data, tmp_path, f"reference={data['refs']}", "fewshot.k=1")
    evaluate_config(built, quiet=True)
    (bank,) = (tmp_path / "banks").glob("*.safetensors")
    with pytest.raises(ConfigError, match=r"built with method=clip"):
        evaluate_config(_config(data, tmp_path / "w", "method=winclip", f"reference={bank}"), quiet=True)
    with pytest.raises(ConfigError, match=r"built with layers=2,4,6,8"):
        evaluate_config(_config(data, tmp_path / "l", f"reference={bank}", "fewshot.layers=[8]"), quiet=True)
    with pytest.raises(ConfigError, match=r"fewshot.k"):
        evaluate_config(_config(data, tmp_path / "k", f"reference={bank}", "fewshot.k=3"), quiet=True)
    (tmp_path / "junk.safetensors").write_bytes(b"not a bank")
    with pytest.raises(ConfigError, match=r"junk.safetensors is not a readable safetensors file"):
        evaluate_config(_config(data, tmp_path / "j", f"reference={tmp_path / 'junk.safetensors'}"), quiet=True)
    with pytest.raises(ConfigError, match=r"fewshot: score_rule: expected one of"):
        _config(data, tmp_path, "fewshot.score_rule=max")
    with pytest.raises(ConfigError, match=r"fewshot.stream: the method runs no dpam stream"):
        evaluate_config(
            _config(data, tmp_path / "s", "method=winclip", f"reference={data['refs']}", "fewshot.stream=dpam"),
            quiet=True,
        )
    with pytest.raises(ConfigError, match=r"no normal references"):
        evaluate_config(_config(data, tmp_path / "n", f"reference={data['refs']}", "fewshot.split=train"), quiet=True)
    with pytest.raises(ConfigError, match=r"^reference: .*nowhere: dataset not found"):
        evaluate_config(_config(data, tmp_path / "x", f"reference={tmp_path / 'nowhere'}"), quiet=True)


def test_a_volume_is_one_reference_with_all_its_slices(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    volume = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 400, (3, 40, 40)).astype(np.int16))
    sitk.WriteImage(volume, str(folder / "a.nrrd"))
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(folder / "b.png")
    units = refs.reference_units(FolderDataset(folder))
    assert sorted(len(indices) for _, indices in units) == [1, 3]


def test_predict_reports_the_references(data, tmp_path, capsys):
    config = _config(data, tmp_path, f"reference={data['refs']}", "fewshot.k=1")
    images = data["target"].parent / "wood" / "test" / "good"
    run_predict(config, [images], tmp_path / "pred")
    (reference,) = (tmp_path / "pred" / "references.csv").read_text().split()[1:]
    assert f"few-shot: 1 reference(s) [{reference}]" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_fewshot_evaluation_matches_one_process(data, tmp_path):
    """2 gloo processes, rank 0 building the bank and both scoring against the saved file, give the
    byte-identical tables and scores of one process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(MEDZSAD_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for processes in (1, 2):
        args = [
            "test",
            *BASE,
            "eval.batch_size=1",
            f"data.test=[t={data['target']}]",
            f"reference={data['refs']}",
            "fewshot.split=test",
            f"fewshot.bank_dir={tmp_path / f'banks{processes}'}",
            f"eval.output_dir={tmp_path / f'out{processes}'}",
        ]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = (
            [*launcher, "-m", "medzsad.cli.main", *args]
            if processes > 1
            else [sys.executable, "-m", "medzsad.cli.main", *args]
        )
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("metrics.csv", "metrics.json", "scores_t.csv", "references.csv"):
        assert (tmp_path / "out2" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes(), name
    rows = list(csv.DictReader((tmp_path / "out1" / "references.csv").open()))
    assert len(rows) == 3
    # (the header's metadata order is not fixed by safetensors: compare contents, not bytes)
    banks = [refs.load_bank(next((tmp_path / f"banks{n}").glob("*.safetensors"))) for n in (1, 2)]
    assert banks[0].meta == banks[1].meta
    assert all(torch.equal(banks[0].features[layer], banks[1].features[layer]) for layer in banks[0].layers)


def test_mlflow_run_holds_the_bank_and_its_references(data, tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    tracking = [
        "tracking.enabled=true",
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifact_location={store / 'mlartifacts'}",
    ]
    config = _config(data, tmp_path, f"reference={data['refs']}", "fewshot.k=2", *tracking)
    evaluate_config(config, quiet=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    (run,) = [run for run in runs if "fewshot_k" in run.data.tags]
    (bank_file,) = (tmp_path / "banks").glob("*.safetensors")
    bank = refs.load_bank(bank_file)
    assert run.data.tags["fewshot_k"] == "2" and run.data.tags["fewshot_layers"] == "2,4,6,8"
    assert run.data.tags["fewshot_references"] == ",".join(bank.reference_ids)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "fewshot")] == ["fewshot/bank.safetensors"]
    assert str(data["refs"].parent) not in str(run.data.params)  # the reference path is never a param
