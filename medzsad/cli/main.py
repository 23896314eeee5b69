"""The ``medzsad`` command line.

Every command reads an optional YAML config (``--config``) and ``key=value`` overrides
(``train.epochs=3 backbone.weights_path=ViT-L-14-336px.pt``); the whole configuration is validated
before any work starts. Errors the user can fix are printed as one line (``medzsad: error: ...``) with
exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from medzsad import __version__

EXIT_USER_ERROR = 2
# A full disk or quota, a read-only or vanished mount: the machine's fault, reported on one line.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from medzsad.backbone.loading import WeightsUnavailableError
    from medzsad.data.errors import DataError
    from medzsad.engine.checkpoints import CheckpointError
    from medzsad.engine.config import ConfigError
    from medzsad.engine.train import TrainingError

    # A PHIError can only come from a loaded guard: importing tracking just to name it would slow every error.
    phi = sys.modules.get("medzsad.tracking.phi")
    extra = (phi.PHIError,) if phi is not None else ()
    return (UserError, ConfigError, CheckpointError, WeightsUnavailableError, DataError, TrainingError, *extra)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="key=value", help="config overrides, e.g. train.epochs=3"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medzsad",
        description="Zero-shot anomaly detection for medical images with prompt-learned CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"medzsad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    predict = commands.add_parser("predict", help="anomaly maps, overlays and scores for images or scans")
    predict.add_argument("--input", "-i", action="append", required=True, help="image file, folder or scan")
    predict.add_argument("--output", "-o", default="predictions", help="output folder (default: predictions)")
    _add_config_arguments(predict)

    test = commands.add_parser("test", help="zero-shot evaluation on target datasets")
    _add_config_arguments(test)

    train = commands.add_parser("train", help="learn prompts on auxiliary data")
    _add_config_arguments(train)

    finetune = commands.add_parser("finetune", help="continue training a checkpoint on (medical) data")
    _add_config_arguments(finetune)

    table = commands.add_parser("table", help="several methods x several datasets into one table")
    table.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=CONFIG.yaml",
        help="a method column: a label and the config (method + checkpoint) to evaluate",
    )
    _add_config_arguments(table)

    demo = commands.add_parser("demo", help="self-contained smoke run on generated data (random weights)")
    demo.add_argument("--workdir", default="medzsad-demo", help="folder for the generated data and outputs")
    demo.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    demo.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")

    prepare = commands.add_parser("prepare", help="build a meta.json manifest from a dataset's raw layout")
    prepare.add_argument("dataset", help="dataset name (see `medzsad prepare --list`) or 'list'")
    prepare.add_argument("raw", nargs="?", help="the dataset's raw download folder")
    prepare.add_argument("out", nargs="?", help="where to write meta.json (default: RAW/meta.json)")
    prepare.add_argument(
        "options", nargs="*", default=[], metavar="key=value", help="e.g. category=brain (folder, volumes)"
    )

    ui = commands.add_parser("ui", help="start the MLflow UI on the local store (loopback only)")
    ui.add_argument("--store", default=".", help="folder holding mlflow.db and mlartifacts (default: .)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server to start")

    tracking = commands.add_parser("tracking", help="tracking utilities")
    tracking_commands = tracking.add_subparsers(dest="tracking_command", required=True, metavar="action")
    upload = tracking_commands.add_parser("upload", help="upload results spooled while MLflow was unreachable")
    upload.add_argument("spool", help="spool folder printed by the run that could not log")
    _add_config_arguments(upload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medzsad`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _sigterm_interrupts()
    try:
        from medzsad.cli import commands

        return int(commands.dispatch(args) or 0)
    except _user_errors() as exc:
        print(f"medzsad: error{_process_note()}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medzsad: interrupted; completed epochs and written outputs are kept", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medzsad: error: {where}{exc.strerror}; the outputs written before are kept", file=sys.stderr)
        return 1
    finally:
        _leave_process_group()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sigterm_interrupts() -> Any:
    """``kill`` (SIGTERM) ends a command like Ctrl-C: written outputs kept, an open MLflow run ended KILLED.
    Returns the previous handler (None when not in the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _process_note() -> str:
    """`` (rank 1 of 4)`` under torchrun, so a message names the process that hit it; empty otherwise."""
    module = sys.modules.get("medzsad.engine.distributed")
    if module is None or not module.is_initialized():
        return ""
    return f" (rank {module.rank()} of {module.world_size()})"


def _leave_process_group() -> None:
    """Under torchrun, leave the process group the command joined (nothing to do otherwise)."""
    module = sys.modules.get("medzsad.engine.distributed")
    if module is not None:
        module.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
