"""torchrun support: sharding, the loss scaling of DDP training, exact metric merges, and real 2-process runs.

The in-process tests check the arithmetic (every process's scaled loss averages to the global batch's
gradient; sharded evaluation merges to the single-process result). The last test launches
``torch.distributed.run`` with 2 CPU processes (gloo) for a tiny training and a tiny evaluation and
compares them with single-process runs of the same commands.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY_OVERRIDES, write_dataset
from safetensors.torch import load_file

from medzsad.data.records import collate_samples
from medzsad.engine import distributed
from medzsad.engine.config import load_config
from medzsad.engine.evaluate import evaluate, evaluate_shard, merge_shards
from medzsad.engine.jobs import make_transform, open_dataset
from medzsad.engine.predict import predict_paths
from medzsad.engine.runtime import build_method
from medzsad.engine.train import (
    TrainingError,
    batch_counts,
    batch_level_terms,
    check_batch_size,
    process_loss,
    step_shares,
)

# Measured (docs/distributed.md; tiny backbone, CPU, 1 thread, AnomalyCLIP, 2 epochs x 3 steps of a global
# batch of 4 over 9 images): with fp32 deep prompts the 2-process prompts differ from 1 process by 3.9e-8
# at most and the logged losses by 3.2e-7; with the default fp16 deep prompts (fp16 rounding of the
# text-side gradient, amplified by Adam) by 5.4e-5.
PROMPT_ATOL = 1e-6
LOSS_ATOL = 1e-5


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    """9 images over 3 categories: batches of 4 leave a short last batch, shards split categories."""
    return write_dataset(tmp_path_factory.mktemp("odd"), n_good=2, n_bad=1, categories=("wood", "tile", "grid"))


def test_single_process_defaults():
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.gather_objects("x") == ["x"] and distributed.broadcast_object(3) == 3
    assert distributed.setup("cpu") == torch.device("cpu")


def test_shard_range_covers_every_index_exactly_once():
    for length in range(0, 23):
        for shards in range(1, 6):
            blocks = [distributed.shard_range(length, shard, shards) for shard in range(shards)]
            assert [i for block in blocks for i in block] == list(range(length))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_step_shares_and_batch_size_check():
    order = [5, 3, 8, 0, 1, 7, 2, 6, 4]
    first = step_shares(order, 4, 3, 0, 2)
    second = step_shares(order, 4, 3, 1, 2)
    assert [s.indices for s in first] == [[5, 3], [1, 7], [4]]  # last batch of 1: a placeholder here
    assert [s.indices for s in second] == [[8, 0], [2, 6], [4]]
    assert [s.size for s in first] == [2, 2, 0] and [s.size for s in second] == [2, 2, 1]
    assert [s.offset for s in second] == [2, 2, 0] and second[-1].global_size == 1
    assert [s.indices for s in step_shares(order, 4, 2)] == [[5, 3, 8, 0], [1, 7, 2, 6]]  # steps cap
    check_batch_size(8, 4)
    with pytest.raises(TrainingError, match=r"train.batch_size=6 cannot be split evenly over 4 processes"):
        check_batch_size(6, 4)


def _gradient(method) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in method.trainable_parameters()]
    )


@pytest.mark.parametrize(
    "method,extra",
    [
        ("anomalyclip", []),
        ("faprompt", []),  # prior loss summed over normal images (official)
        ("faprompt", ["method_config.prior_loss_reduction=mean"]),
        ("cops", []),  # gather/scatter: means over patches; VAE noise rows of the global draw
    ],
)
def test_process_losses_average_to_the_global_batch_gradient(odd_dataset, method, extra):
    """What DDP computes (mean over processes of each one's scaled-loss gradient) is the gradient of one
    process on the global batch, for uneven shares and for a placeholder share."""
    config = load_config(None, [*TINY_OVERRIDES, f"method={method}", "method_config.fp16_deep_prompts=false", *extra])
    torch.manual_seed(0)
    model = build_method(config).train()
    dataset = open_dataset(odd_dataset, config, 224)
    special = batch_level_terms(model)
    order = [3, 7, 0, 5, 1, 8, 2, 4, 6]
    for size, processes in [(5, 2), (1, 2)]:
        batch = collate_samples([dataset[i] for i in order[:size]])
        noise = torch.randn(size, model.backbone.embed_dim) if method == "cops" else None
        model.zero_grad()
        reference = model.loss(batch.image, batch.mask, batch.label, **({"noise": noise} if method == "cops" else {}))
        reference.total.backward()
        expected = _gradient(model)
        shares = [step_shares(order, size, 1, rank, processes)[0] for rank in range(processes)]
        parts = [collate_samples([dataset[i] for i in share.indices]) for share in shares]
        counts = [batch_counts(model, part, share, special) for share, part in zip(shares, parts)]
        totals = {name: float(sum(c[name] for c in counts)) for name in counts[0]}
        summed = torch.zeros_like(expected)
        logged = 0.0
        for share, part, count in zip(shares, parts, counts):
            model.zero_grad()
            kwargs = {}
            if noise is not None:
                kwargs["noise"] = noise[share.offset : share.offset + share.size] if share.size else noise[:1]
            out = model.loss(part.image, part.mask, part.label, **kwargs)
            loss, _ = process_loss(out.total, out.terms, share, special, count, totals, processes)
            loss.backward()
            summed += _gradient(model)
            logged += float(loss.detach()) / processes
        average = summed / processes
        assert float((average - expected).norm() / expected.norm()) < 1e-5, (size, processes)
        assert logged == pytest.approx(float(reference.total.detach()), abs=1e-5)


@pytest.mark.parametrize("method", ["anomalyclip", "cops"])
def test_sharded_evaluation_merges_to_the_single_process_result(odd_dataset, method):
    """Blocks evaluated separately (CoPS's test stream advanced per block) and merged give the same
    report, to the last bit, and the same scores in the same order."""
    config = load_config(None, [*TINY_OVERRIDES, f"method={method}", "eval.batch_size=1"])
    torch.manual_seed(0)
    model = build_method(config)
    dataset = open_dataset(odd_dataset, config, 224)
    cpu = torch.device("cpu")
    single = evaluate(model, dataset, config.eval, cpu, "odd", review_limit=2, review_worst=2)
    shards = [evaluate_shard(model, dataset, config.eval, cpu, r, 3, "odd", 2, review_worst=2) for r in range(3)]
    merged = merge_shards(shards, "odd", review_limit=2, review_worst=2)
    assert merged.report.to_dict() == single.report.to_dict()
    assert [(s.sample_id, s.score) for s in merged.samples] == [(s.sample_id, s.score) for s in single.samples]
    kept = lambda result: [(r.sample_id, r.errors_only) for r in result.review]  # noqa: E731
    assert kept(merged) == kept(single)

    # The review holds the first two samples and the worst errors of the whole dataset, wherever they are.
    first = [s.sample_id for s in single.samples[:2]]
    normals = sorted((s for s in single.samples if s.label == 0), key=lambda s: -s.score)
    anomalies = sorted((s for s in single.samples if s.label == 1), key=lambda s: s.score)
    worst = {s.sample_id for s in normals[:2] + anomalies[:2]}
    assert [r.sample_id for r in single.review if not r.errors_only] == first
    assert {r.sample_id for r in single.review if r.errors_only} == worst - set(first)


# -- real processes ----------------------------------------------------------------------------------


def _run(args: list[str], processes: int, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(MEDZSAD_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if processes == 1:
        command = [sys.executable, "-m", "medzsad.cli.main", *args]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*launcher, "-m", "medzsad.cli.main", *args]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(odd_dataset, tmp_path):
    """2 gloo processes vs 1: training (global batch 4 = 2 x 2, short last batch with a placeholder) gives
    the same prompts within PROMPT_ATOL; evaluation gives byte-identical tables and score CSVs; prediction
    writes every file's outputs once and the same CSVs."""
    common = [*TINY_OVERRIDES, "method_config.fp16_deep_prompts=false"]
    train = [*common, f"data.train={odd_dataset}", "train.epochs=2", "train.batch_size=4"]
    for processes in (1, 2):
        _run(["train", *train, f"train.output_dir={tmp_path / f'train{processes}'}"], processes, tmp_path)
    one, two = (load_file(tmp_path / f"train{n}" / "epoch_2.safetensors") for n in (1, 2))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=0, atol=PROMPT_ATOL), (key, (one[key] - two[key]).abs().max())
    assert not torch.equal(one["ctx_pos"], load_file(tmp_path / "train1" / "epoch_1.safetensors")["ctx_pos"])
    losses = [json.loads((tmp_path / f"train{n}" / "epoch_2.json").read_text())["training"] for n in (1, 2)]
    assert losses[1]["processes"] == 2
    for name, value in losses[0]["losses"].items():
        assert losses[1]["losses"][name] == pytest.approx(value, abs=LOSS_ATOL), name

    checkpoint = tmp_path / "train1" / "epoch_2.safetensors"
    test = [*common, f"checkpoint={checkpoint}", f"data.test=[odd={odd_dataset}]", "eval.batch_size=1"]
    for processes in (1, 2):
        out = tmp_path / f"test{processes}"
        _run(["test", *test, f"eval.output_dir={out}", "eval.save_maps=true"], processes, tmp_path)
    for name in ("metrics.csv", "metrics.json", "scores_odd.csv"):
        assert (tmp_path / "test2" / name).read_bytes() == (tmp_path / "test1" / name).read_bytes(), name
    maps = sorted(p.name for p in (tmp_path / "test1" / "maps" / "odd").iterdir())
    assert len(maps) == 9 and maps == sorted(p.name for p in (tmp_path / "test2" / "maps" / "odd").iterdir())

    # predict: each process scores its block of the files; rank 0 writes every row, in input order.
    images = odd_dataset.parent
    _run(
        ["predict", "-i", str(images), "-o", str(tmp_path / "pred2"), *common, f"checkpoint={checkpoint}"], 2, tmp_path
    )
    config = load_config(None, [*common, f"checkpoint={checkpoint}"])
    single = predict_paths(
        build_method(config), [images], tmp_path / "pred1", torch.device("cpu"), make_transform(config, 224)
    )
    assert single.images == 9 + 3  # the 9 images and the 3 masks
    rows = [list(csv.DictReader((tmp_path / f"pred{n}" / "scores.csv").open())) for n in (1, 2)]
    assert [r["sample_id"] for r in rows[1]] == [r["sample_id"] for r in rows[0]]
    for one_row, two_row in zip(*rows):
        assert float(two_row["score"]) == pytest.approx(float(one_row["score"]), abs=1e-6)
        assert (tmp_path / "pred2" / "maps" / f"{two_row['sample_id']}.npz").is_file()
    index = [(tmp_path / f"pred{n}" / "sample_index.local.csv").read_text() for n in (1, 2)]
    assert index[0] == index[1]
