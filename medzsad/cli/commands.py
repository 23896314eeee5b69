"""What each ``medzsad`` command does: parse, validate, then call the library."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medzsad.engine.config import ConfigError, RunConfig, load_config
from medzsad.engine.outputs import changed_since, store_lines


def dispatch(args: argparse.Namespace) -> int:
    handlers = {
        "predict": cmd_predict,
        "export": cmd_export,
        "test": cmd_test,
        "calibrate": cmd_calibrate,
        "train": cmd_train,
        "finetune": cmd_finetune,
        "table": cmd_table,
        "demo": cmd_demo,
        "prepare": cmd_prepare,
        "ui": cmd_ui,
        "tracking": cmd_tracking,
        "config": cmd_config,
    }
    return handlers[args.command](args)


def _config(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def cmd_predict(args: argparse.Namespace) -> int:
    config = _config(args)  # validated before torch loads
    from medzsad.engine import distributed
    from medzsad.engine.jobs import run_predict

    if args.engine:
        args.overrides.append(f"predict.engine={args.engine}")
        config = _config(args)
    start = time.time()
    summary = run_predict(config, args.input, Path(args.output))
    if not distributed.is_main():
        return 1 if summary.failures else 0
    written = ", ".join(changed_since(Path(summary.output_dir), start)) or "nothing"
    print(f"wrote {summary.images} image(s) and {summary.volumes} volume(s) to {summary.output_dir}: {written}")
    if summary.failures:
        print(f"{len(summary.failures)} input(s) could not be read (listed above)")
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medzsad.deploy.export import OPSET
    from medzsad.engine.jobs import run_export

    result, bundle = run_export(_config(args), Path(args.output), args.format)
    worst = max(result.max_abs_diff.values())
    print(f"wrote {result.path} (ONNX opset {OPSET}; |ONNX - PyTorch| = {worst:.2g} on a check batch)")
    print(f"  decisions: {result.thresholds}; few-shot bank: {result.fewshot or 'none (zero-shot)'}")
    if bundle is not None:
        print(f"wrote MONAI bundle {bundle} (python -m monai.bundle run --config_file configs/inference.json ...)")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.data.test:
        raise ConfigError("data.test: give one or more target datasets, e.g. data.test=[path/to/meta.json]")
    from medzsad.engine.jobs import run_test

    start = time.time()
    run_test(config)
    _announce(config, Path(config.eval.output_dir), start)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from medzsad.engine.jobs import run_calibrate

    run_calibrate(_config(args))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = _config(args)
    from medzsad.engine.jobs import run_train

    start = time.time()
    run_train(config, finetune=False)
    _announce(config, Path(config.train.output_dir), start)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    config = _config(args)
    from medzsad.engine.jobs import run_train

    start = time.time()
    run_train(config, finetune=True)
    _announce(config, Path(config.train.output_dir), start)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    base = _config(args)
    columns = {}
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--run {spec!r}: expected LABEL=CONFIG.yaml")
        columns[label] = load_config(path, args.overrides)
    from medzsad.engine.jobs import run_table

    start = time.time()
    run_table(base, columns)
    _announce(base, Path(base.eval.output_dir), start)
    return 0


def _announce(config: RunConfig, folder: Path, start: float) -> None:
    """The last lines of a command: what it wrote in ``folder`` since ``start``, the MLflow store and the
    command that opens it (rank 0 only under torchrun)."""
    from medzsad.engine import distributed

    if not distributed.is_main():
        return
    written = changed_since(folder, start)
    print(f"wrote to {folder}: {', '.join(written) if written else 'nothing'}")
    if config.tracking.enabled:
        tracking = config.tracking
        print("\n".join(store_lines(tracking.tracking_uri, tracking.artifact_location)))


def cmd_demo(args: argparse.Namespace) -> int:
    from medzsad.engine.demo import run_demo

    run_demo(Path(args.workdir), steps=args.steps, use_mlflow=not args.no_mlflow)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from medzsad.cli.prepare import dataset_list, parse_prepare_args, run_prepare

    positional, options = parse_prepare_args(args.args)
    if args.list or positional[:1] == ["list"]:
        print(dataset_list())
        return 0
    if len(positional) < 2 or len(positional) > 3:
        raise ConfigError("prepare: give DATASET RAW [OUT] (medzsad prepare list shows the datasets)")
    out = Path(positional[2]) if len(positional) == 3 else None
    return run_prepare(positional[0], Path(positional[1]), out, options, args.strict)


def cmd_config(args: argparse.Namespace) -> int:
    from medzsad.cli.config_show import show_config

    print(show_config(args.config, args.overrides))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal

    from medzsad.cli.main import UserError
    from medzsad.tracking import serve_ui

    try:
        server = serve_ui(Path(args.store), port=args.port, timeout_s=args.start_timeout or None)
    except (FileNotFoundError, OSError, TimeoutError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log = Path(args.store).resolve() / "mlflow-ui.log"
        detail = (
            f" (server log: {log}; wait longer with --start-timeout)"
            if isinstance(exc, TimeoutError | RuntimeError)
            else ""
        )
        raise UserError(f"ui: {first}{detail}") from None
    # SIGTERM (kill, systemd, a test) stops the server the same way as Ctrl-C, from the first line on.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"MLflow UI on {server.url} (loopback only); Ctrl-C to stop", flush=True)
        for name, url in server.runs_urls(Path(args.store)).items():
            print(f"  {name}: {url}")
        print(f"  all experiments: {server.experiments_url()}", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("MLflow UI stopped")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_tracking(args: argparse.Namespace) -> int:
    from medzsad.tracking import upload_spool

    runs = upload_spool(Path(args.spool), _config(args).tracking)
    print(f"uploaded {len(runs)} run(s): {', '.join(runs)}")
    return 0
