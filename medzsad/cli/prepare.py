"""``medzsad prepare``: the dataset list with layouts, ``category=``, and the missing-mask check.

The layouts come from the preparers' own docstrings (``medzsad.data.prepare``), so the list cannot
drift from the code. Importing the preparers loads numpy and pydicom, not torch.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medzsad.engine.config import ConfigError

__all__ = ["dataset_list", "masks_missing", "parse_prepare_args", "run_prepare"]


def prepare(dataset: str, raw: Path, out: Path, **options: str) -> Any:
    from medzsad.data.prepare import prepare as run

    return run(dataset, raw, out, **options)


def _preparers() -> dict[str, Callable[..., Any]]:
    from medzsad.data.prepare import PREPARERS

    return PREPARERS


def layout(function: Callable[..., Any]) -> str:
    """The first paragraph of a preparer's docstring, on one line, without reST markup."""
    paragraphs = (inspect.getdoc(function) or "").split("\n\n")
    # "Two layouts:" announces the next paragraph (the list of layouts), so it comes along.
    kept = paragraphs[:2] if paragraphs[0].rstrip().endswith(":") else paragraphs[:1]
    first = " ".join(" ".join(kept).split())
    return re.sub(r"``([^`]*)``", r"\1", first)


def dataset_list(width: int = 100) -> str:
    """Every dataset name with its expected layout, wrapped to ``width`` columns."""
    preparers = _preparers()
    lines = ["datasets (medzsad prepare NAME RAW [OUT]) and the layout each expects under RAW:"]
    for name in sorted(preparers):
        text = f"{name:10s} {layout(preparers[name])}"
        lines.extend(textwrap.wrap(text, width, subsequent_indent=" " * 11))
    return "\n".join(lines)


def parse_prepare_args(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split ``[DATASET, RAW, OUT, key=value...]`` into positionals and options (``category=`` only)."""
    positional, options = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and not Path(arg).exists() and key.isidentifier():
            if key != "category":
                raise ConfigError(f"prepare: unknown option {key}= (known: category=NAME)")
            if not value.strip():
                raise ConfigError("category: give a name, e.g. category=brain")
            options[key] = value.strip()
        else:
            positional.append(arg)
    return positional, options


def masks_missing(manifest: Any) -> dict[str, int]:
    """Per category: anomalous images without a mask, in categories where other images have masks
    (those categories' pixel metrics then cover only the images with masks)."""
    missing = {}
    for split in manifest.splits:
        for category, records in manifest.splits[split].items():
            if any(r.mask_path for r in records):
                count = sum(1 for r in records if r.anomaly == 1 and not r.mask_path)
                if count:
                    missing[category] = missing.get(category, 0) + count
    return missing


def run_prepare(dataset: str, raw: Path, out: Path | None, options: dict[str, str], strict: bool) -> int:
    """Prepare ``dataset`` from ``raw``; print the manifest path, counts and missing-mask warnings.

    With ``strict`` the manifest is first written beside its destination and kept only when every
    anomalous image has a mask, so a refused dataset leaves no manifest behind."""
    preparers = _preparers()
    if dataset not in preparers:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(preparers))} (medzsad prepare list)")
    function = preparers[dataset]
    if options and "category" not in inspect.signature(function).parameters:
        names = [n for n, f in sorted(preparers.items()) if "category" in inspect.signature(f).parameters]
        raise ConfigError(
            f"category: {dataset} keeps its published category names; category= applies to {', '.join(names)}"
        )
    final = out if out is not None else raw / "meta.json"
    final = final / "meta.json" if final.is_dir() else final
    target = final.with_name(f".{final.stem}.strict-check.json") if strict else final
    manifest = prepare(dataset, raw, target, **options)  # checks the folder and the category name
    missing = masks_missing(manifest)
    if strict:
        if missing:
            target.unlink(missing_ok=True)
            raise ConfigError(f"--strict: {_missing_text(missing)}; no manifest written")
        target.replace(final)
    for split in ("train", "test"):
        counts = manifest.counts(split)
        for category, c in counts.items():
            print(f"  {split}/{category}: {c['normal']} normal, {c['anomalous']} anomalous, {c['with_mask']} masks")
    if missing:
        print(
            f"warning: {_missing_text(missing)}; their pixel metrics will use only the images with masks "
            "(--strict refuses such a dataset)"
        )
    print(f"wrote {final}")
    return 0


def _missing_text(missing: dict[str, int]) -> str:
    parts = ", ".join(f"{category}: {count}" for category, count in sorted(missing.items()))
    return f"anomalous images without a mask ({parts})"
