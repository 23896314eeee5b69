"""How long does ``medzsad`` take to answer when it has no model to load?

A user who mistypes a key or asks for the dataset list should get the answer before torch loads. This
script runs each command in a fresh Python process (as the console script does), several times, and
prints the median wall time and whether torch was imported on the way:

    python scripts/bench_startup.py             # 5 runs of each
    python scripts/bench_startup.py --runs 9

Cases: ``--help`` of ``test``, ``prepare list``, a config error (``train.epochs=ten``) and, as the
reference cost of loading the model stack, ``import torch, open_clip``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# Each case runs medzsad's entry point in-process and prints whether torch got imported, so the timing
# and the import check come from the same run.
_PROBE = (
    "import sys\n"
    "from medzsad.cli.main import main\n"
    "try:\n"
    "    main({argv!r})\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('TORCH=' + str('torch' in sys.modules), file=sys.stderr)\n"
)

CASES: dict[str, str] = {
    "test --help": _PROBE.format(argv=["test", "--help"]),
    "prepare list": _PROBE.format(argv=["prepare", "list"]),
    "config error (train.epochs=ten)": _PROBE.format(argv=["test", "train.epochs=ten"]),
    "reference: import torch, open_clip": "import sys, torch, open_clip\nprint('TORCH=True', file=sys.stderr)\n",
}


def run_once(code: str) -> tuple[float, bool]:
    """Wall seconds of one fresh interpreter running ``code``, and whether torch was imported."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    return elapsed, "TORCH=True" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    args = parser.parse_args()
    print(f"{'case':38s} {'median s':>9s} {'min s':>7s}  torch imported")
    results = {}
    for name, code in CASES.items():
        times, torch_seen = zip(*(run_once(code) for _ in range(args.runs)))
        results[name] = statistics.median(times)
        print(f"{name:38s} {results[name]:9.2f} {min(times):7.2f}  {'yes' if any(torch_seen) else 'no'}")
    reference = results["reference: import torch, open_clip"]
    for name in ("prepare list", "config error (train.epochs=ten)"):
        print(f"{name}: {results[name] / reference:.2f} x the time of importing torch + open_clip")


if __name__ == "__main__":
    main()
