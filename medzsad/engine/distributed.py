"""Running one command in several processes launched by ``torchrun`` (one per GPU, on one or many nodes).

medzsad never starts processes itself: ``torchrun`` (or ``srun torchrun`` on SLURM) starts the same
command once per GPU and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables;
:func:`setup` reads them, joins the process group once (NCCL on CUDA after
``torch.cuda.set_device(LOCAL_RANK)``, gloo on CPU) and returns the device of this process. Without
those variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper here behaves as in a
single process: rank 0 of 1, the main process, collectives that return their input.

Python objects (metric states, per-sample rows) travel over a separate gloo group on the CPU, so
gathering a large metric state never allocates GPU memory. Every collective waits at most
``MEDZSAD_DIST_TIMEOUT_S`` seconds (default 3600) for the slowest process.

The jobs of :mod:`medzsad.engine.jobs` call :func:`setup` themselves; the command line calls
:func:`shutdown` when the command ends. A Python user running under ``torchrun`` calls the same two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from medzsad.engine.runtime import resolve_device

TIMEOUT_ENV = "MEDZSAD_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class LaunchEnv:
    """What ``torchrun`` tells this process: its rank among all, their number, its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class _State:
    device: torch.device | None = None
    object_group: Any = None  # gloo group for pickled objects (None: the default group is gloo)
    owns_group = False


_state = _State()


def launch_env() -> LaunchEnv:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment (0/1/0 when absent)."""

    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "").strip()
        try:
            return int(text) if text else default
        except ValueError:
            raise RuntimeError(f"{name}={text!r}: expected an integer (set by torchrun)") from None

    env = LaunchEnv(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise RuntimeError(f"RANK={env.rank} WORLD_SIZE={env.world_size}: not a valid torchrun launch")
    return env


def is_initialized() -> bool:
    """Whether this process is in a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return launch_env().local_rank if is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that prints, writes tables and checkpoints and logs to MLflow."""
    return rank() == 0


def timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    return timedelta(seconds=float(text) if text else DEFAULT_TIMEOUT_S)


def _device_for(name: str, env: LaunchEnv) -> torch.device:
    """``auto``/``cuda`` mean this process's GPU (``cuda:LOCAL_RANK``) under torchrun; ``cuda:N`` and
    ``cpu`` are taken as given; ``MEDZSAD_DEVICE`` overrides ``auto`` as in a single process."""
    if name == "auto":
        name = os.environ.get("MEDZSAD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    return torch.device("cuda", env.local_rank) if device.type == "cuda" and device.index is None else device


def setup(device_name: str = "auto") -> torch.device:
    """Join the ``torchrun`` process group (once) and return this process's device.

    Without a torchrun launch this is ``resolve_device``: ``auto`` gives CUDA when available, else CPU.
    """
    env = launch_env()
    if not env.distributed:
        return resolve_device(device_name)
    if _state.device is not None:
        return _state.device
    device = _device_for(device_name, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout())
        _state.owns_group = True
    if dist.get_world_size() != env.world_size:
        raise RuntimeError(f"process group has {dist.get_world_size()} processes, WORLD_SIZE={env.world_size}")
    _state.object_group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout())
    _state.device = device
    return device


def shutdown() -> None:
    """Leave the process group this module joined (no-op otherwise)."""
    if _state.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _state.device = None
    _state.object_group = None
    _state.owns_group = False


def barrier() -> None:
    if is_initialized():
        dist.barrier(group=_state.object_group)


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every process's ``obj`` in rank order on ``dst`` (``None`` elsewhere); ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    received: list[Any] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, received, dst=dst, group=_state.object_group)
    return received


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order, on every process."""
    if not is_initialized():
        return [obj]
    received: list[Any] = [None] * world_size()
    dist.all_gather_object(received, obj, group=_state.object_group)
    return received


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``src``'s ``obj`` on every process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_state.object_group)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over the processes (in place, on the tensor's device); unchanged in one process."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard_range(length: int, shard: int | None = None, shards: int | None = None) -> range:
    """The contiguous block of ``range(length)`` that process ``shard`` of ``shards`` handles.

    Blocks differ in size by at most one, cover every index exactly once (no padding, no duplicate)
    and, concatenated in rank order, give back ``range(length)``; defaults are this process's rank and
    the world size.
    """
    shard = rank() if shard is None else shard
    shards = world_size() if shards is None else shards
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    return range(shard * length // shards, (shard + 1) * length // shards)
