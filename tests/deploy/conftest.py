"""Fixtures for the deployment tests: one tiny checkpoint and one export per method and test session.

Exporting traces the whole graph (tens of seconds to minutes per method on a loaded CPU), so every
export is cached for the session and shared by the tests that need it.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from deploy_helpers import TINY

from medzsad.backbone.clip import BackboneConfig, ClipBackbone
from medzsad.cli.main import main
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.methods.registry import method_class


@dataclass
class Deployed:
    """A method's tiny checkpoint and what ``medzsad export`` wrote for it."""

    method: str
    checkpoint: Path
    onnx: Path
    bundle: Path


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    return ClipBackbone.from_config(BackboneConfig(model_name="medzsad-tiny-fast", pretrained=None))


@pytest.fixture(scope="session")
def deployed(tmp_path_factory, tiny_backbone):
    """``deployed(name)``: checkpoint (seeded random prompts) and export of method ``name``, made once.

    Under pytest-xdist the workers share one folder (the parent of their temporary roots) and a lock
    per method, so the first worker that needs a method exports it and the others reuse the files.
    """
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "deploy_exports"
    shared.mkdir(parents=True, exist_ok=True)

    def get(name: str) -> Deployed:
        root = shared / name
        item = Deployed(name, root / "ckpt.safetensors", root / "export" / "model.onnx", root / "export" / "bundle")
        with open(shared / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (root / "done").is_file():
                root.mkdir(exist_ok=True)
                cls = method_class(name)
                torch.manual_seed(0)
                save_checkpoint(cls(tiny_backbone, cls.config_class(image_size=224)), root / "ckpt")
                overrides = [*TINY, f"method={name}", f"checkpoint={item.checkpoint}"]
                assert main(["export", "-o", str(root / "export"), *overrides]) == 0
                (root / "done").write_text("")
        return item

    return get
