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
    """The exception types printed as one line. Only modules already imported can have raised one, so
    the others are not imported here (a config error must not wait for torch to load)."""
    found: list[type[BaseException]] = [UserError]
    for module_name, name in _USER_ERROR_TYPES:
        module = sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, name))
    return tuple(found)


_USER_ERROR_TYPES = (
    ("medzsad.engine.config", "ConfigError"),
    ("medzsad.engine.checkpoints", "CheckpointError"),
    ("medzsad.backbone.loading", "WeightsUnavailableError"),
    ("medzsad.data.errors", "DataError"),
    ("medzsad.engine.train", "TrainingError"),
    ("medzsad.deploy.errors", "DeployError"),
    # A PHIError can only come from a loaded guard: importing tracking just to name it would slow every error.
    ("medzsad.tracking.phi", "PHIError"),
)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE.yaml", help="YAML config file (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help="config overrides applied after the file, e.g. train.epochs=3 backbone=tiny",
    )


def _command(commands: argparse._SubParsersAction, name: str, summary: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows ``text`` as written (required keys, outputs, examples)."""
    return commands.add_parser(
        name, help=summary, description=text, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def build_parser() -> argparse.ArgumentParser:
    from medzsad.cli import helptext

    parser = argparse.ArgumentParser(
        prog="medzsad",
        description="Zero-shot anomaly detection for medical images with prompt-learned CLIP.",
        epilog="`medzsad COMMAND --help` lists a command's required keys, outputs and examples.\n"
        + helptext.CONFIG_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medzsad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    predict = _command(commands, "predict", "anomaly maps, overlays and scores for images or scans", helptext.PREDICT)
    predict.add_argument(
        "--input", "-i", action="append", required=True, metavar="PATH", help="image, folder or scan (repeatable)"
    )
    predict.add_argument("--output", "-o", default="predictions", help="output folder (default: predictions)")
    predict.add_argument("--engine", choices=["torch", "onnx"], help="onnx: run a `medzsad export` file (checkpoint=)")
    _add_config_arguments(predict)

    export = _command(commands, "export", "ONNX file and MONAI bundle of a trained method", helptext.EXPORT)
    export.add_argument("--output", "-o", default="export", help="output folder (default: export)")
    export.add_argument("--format", choices=["onnx", "bundle", "all"], default="all", help="what to write")
    _add_config_arguments(export)

    test = _command(commands, "test", "zero-shot evaluation on target datasets", helptext.TEST)
    _add_config_arguments(test)

    calibrate = _command(
        commands, "calibrate", "decision thresholds from reference scans (docs/decisions.md)", helptext.CALIBRATE
    )
    _add_config_arguments(calibrate)

    train = _command(commands, "train", "learn prompts on auxiliary data", helptext.TRAIN)
    _add_config_arguments(train)

    finetune = _command(commands, "finetune", "continue training a checkpoint on (medical) data", helptext.FINETUNE)
    _add_config_arguments(finetune)

    table = _command(commands, "table", "several methods x several datasets into one table", helptext.TABLE)
    table.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=CONFIG.yaml",
        help="a method column: a label and the config (method + checkpoint) to evaluate (repeatable)",
    )
    _add_config_arguments(table)

    demo = _command(commands, "demo", "self-contained smoke run on generated data (random weights)", helptext.DEMO)
    demo.add_argument(
        "--workdir", default="medzsad-demo", help="folder for the data and outputs (default: %(default)s)"
    )
    demo.add_argument("--steps", type=int, default=4, help="training steps per epoch (default: %(default)s)")
    demo.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")

    prepare = _command(commands, "prepare", "build a meta.json manifest from a dataset's raw layout", helptext.PREPARE)
    prepare.add_argument("--list", action="store_true", help="list the datasets and their expected layouts")
    prepare.add_argument("--strict", action="store_true", help="refuse anomalous images without a mask")
    prepare.add_argument(
        "args",
        nargs="*",
        metavar="DATASET RAW [OUT] [category=NAME]",
        help="dataset name (or 'list'), raw folder, manifest path, options",
    )

    ui = _command(commands, "ui", "start the MLflow UI on the local store (loopback only)", helptext.UI)
    ui.add_argument("--store", default=".", help="folder holding mlflow.db and mlartifacts (default: .)")
    ui.add_argument("--port", type=int, default=5000, help="TCP port (default: %(default)s)")
    ui.add_argument(
        "--start-timeout",
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the server to answer; 0 waits as long as it runs (default: %(default)s)",
    )

    tracking = commands.add_parser("tracking", help="tracking utilities (upload a spool)")
    tracking_commands = tracking.add_subparsers(dest="tracking_command", required=True, metavar="action")
    upload = _command(
        tracking_commands, "upload", "upload results spooled while MLflow was unreachable", helptext.TRACKING_UPLOAD
    )
    upload.add_argument("spool", metavar="SPOOL", help="spool folder printed by the run that could not log")
    _add_config_arguments(upload)

    config = commands.add_parser("config", help="show the resolved configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="action")
    show = _command(config_commands, "show", "print the resolved configuration and its sources", helptext.CONFIG_SHOW)
    _add_config_arguments(show)
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
