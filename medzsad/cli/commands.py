"""What each ``medzsad`` command does: parse, validate, then call the library."""

from __future__ import annotations

import argparse
from pathlib import Path

from medzsad.engine.config import ConfigError, RunConfig, load_config


def dispatch(args: argparse.Namespace) -> int:
    handlers = {
        "predict": cmd_predict,
        "test": cmd_test,
        "train": cmd_train,
        "finetune": cmd_finetune,
        "table": cmd_table,
        "demo": cmd_demo,
        "prepare": cmd_prepare,
        "ui": cmd_ui,
        "tracking": cmd_tracking,
    }
    return handlers[args.command](args)


def _config(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def cmd_predict(args: argparse.Namespace) -> int:
    from medzsad.engine import distributed
    from medzsad.engine.jobs import run_predict

    summary = run_predict(_config(args), args.input, Path(args.output))
    if not distributed.is_main():
        return 1 if summary.failures else 0
    print(
        f"wrote {summary.images} image(s) and {summary.volumes} volume(s) to {summary.output_dir} "
        f"(scores.csv, maps/, overlays/, volumes/)"
    )
    if summary.failures:
        print(f"{len(summary.failures)} input(s) could not be read (listed above)")
        return 1
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from medzsad.engine.jobs import run_test

    config = _config(args)
    if not config.data.test:
        raise ConfigError("data.test: give one or more target datasets, e.g. data.test=[path/to/meta.json]")
    run_test(config)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medzsad.engine.jobs import run_train

    run_train(_config(args), finetune=False)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from medzsad.engine.jobs import run_train

    run_train(_config(args), finetune=True)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from medzsad.engine.jobs import run_table

    base = _config(args)
    columns = {}
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--run {spec!r}: expected LABEL=CONFIG.yaml")
        columns[label] = load_config(path, args.overrides)
    run_table(base, columns)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medzsad.engine.demo import run_demo

    run_demo(Path(args.workdir), steps=args.steps, use_mlflow=not args.no_mlflow)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from medzsad.data.prepare import PREPARERS, prepare

    if args.dataset == "list" or args.raw is None:
        print("datasets: " + ", ".join(sorted(PREPARERS)))
        return 0 if args.dataset == "list" else 2
    if args.dataset not in PREPARERS:
        raise ConfigError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(PREPARERS))}")
    words = [w for w in (args.out, *args.options) if w]  # `prepare folder RAW category=brain` has no OUT
    options = dict(w.split("=", 1) for w in words if "=" in w)
    outs = [w for w in words if "=" not in w]
    if len(outs) > 1:
        raise ConfigError(f"prepare: one output path expected, got {len(outs)}: give OUT, then key=value options")
    out = Path(outs[0]) if outs else Path(args.raw) / "meta.json"
    manifest = prepare(args.dataset, Path(args.raw), out, **options)
    counts = manifest.counts("test") if hasattr(manifest, "counts") else {}
    print(f"wrote {out}" + (f": {counts}" if counts else ""))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from medzsad.cli.main import UserError
    from medzsad.tracking import serve_ui

    try:
        server = serve_ui(Path(args.store), port=args.port, timeout_s=args.timeout)
    except (FileNotFoundError, OSError, TimeoutError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log = Path(args.store).resolve() / "mlflow-ui.log"
        detail = (
            f" (server log: {log}; wait longer with --timeout)" if isinstance(exc, TimeoutError | RuntimeError) else ""
        )
        raise UserError(f"ui: {first}{detail}") from None
    print(f"MLflow UI on {server.url} (loopback only); Ctrl-C to stop")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def cmd_tracking(args: argparse.Namespace) -> int:
    from medzsad.engine.jobs import tracking_config
    from medzsad.tracking import upload_spool

    runs = upload_spool(Path(args.spool), tracking_config(_config(args)))
    print(f"uploaded {len(runs)} run(s): {', '.join(runs)}")
    return 0
