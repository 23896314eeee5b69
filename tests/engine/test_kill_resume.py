"""A training process killed with SIGKILL resumes from its last complete epoch to the same prompts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from engine_helpers import TINY_OVERRIDES
from safetensors.torch import load_file


def _train_command(dataset, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medzsad.cli.main",
        "train",
        *TINY_OVERRIDES,
        f"data.train={dataset}",
        f"train.output_dir={out}",
        "train.epochs=3",
        "train.batch_size=4",
        "train.max_steps_per_epoch=3",
    ]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_command(tiny_dataset, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(tiny_dataset, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (killed / "epoch_1.json").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "epoch_3.safetensors").exists()
    for checkpoint in killed.glob("epoch_*.safetensors"):  # atomic writes: whatever is there is whole
        load_file(checkpoint)

    resumed = subprocess.run(_train_command(tiny_dataset, killed), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(straight / "epoch_3.safetensors")
    b = load_file(killed / "epoch_3.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
