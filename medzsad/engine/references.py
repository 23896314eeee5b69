"""Few-shot references: pick k normal references, build (or reuse) their memory bank, attach it to a method.

``reference=`` names a manifest (its normal records of ``fewshot.split``), a folder of images or scans
(volumes and DICOM series count as one reference each, with all their slices), or a bank saved earlier
(``.safetensors``). A bank is saved under ``fewshot.bank_dir`` with a name keyed by everything its
features depend on (method, prompt digest, backbone, references, layers, stream, image size, data
settings, precision) and reused by later runs with the same key. Under torchrun rank 0 builds and saves
it and every process loads the saved file, so all processes score against the same bank.

The memory bank logic is :mod:`medzsad.methods.memory`; this module only reads and writes files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch.utils.data import DataLoader, Dataset, Subset

from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.ids import pseudonymous_id
from medzsad.data.records import collate_samples
from medzsad.engine import distributed
from medzsad.engine.config import ConfigError, RunConfig
from medzsad.methods.base import ZsadMethod
from medzsad.methods.memory import FewShotConfig, FewShotMethod, MemoryBank, collect_bank, resolve_layers
from medzsad.utils.files import atomic_path, atomic_write_text

BANK_FORMAT = "medzsad-memory-bank-1"
# Bank metadata that must match the run for a saved bank to be used with it.
MATCHING_KEYS = ("method", "checkpoint_digest", "backbone_weights", "layers", "stream", "project", "image_size")


@dataclass
class References:
    """The bank a run uses and where it is saved (for MLflow)."""

    bank: MemoryBank
    path: Path | None


def reference_units(dataset: Dataset) -> list[tuple[Hashable, list[int]]]:
    """The dataset's references in order, each with its sample indices: an image, or a volume with its
    slices. A manifest's abnormal records are never references; a folder's files are taken as normal.
    Read from the index, without loading pixels."""
    units: dict[Hashable, list[int]] = {}
    if isinstance(dataset, ManifestDataset):
        for index, record in enumerate(dataset.records):
            if not record.anomaly:
                key = (record.cls_name, record.img_path) if record.slice_index is not None else index
                units.setdefault(key, []).append(index)
    elif isinstance(dataset, FolderDataset):
        for index, entry in enumerate(dataset.entries):
            volume = dataset.study.items[entry.item].is_volume  # a volume's slices are one reference
            key = entry.item if volume else (entry.item, entry.index)
            units.setdefault(key, []).append(index)
    else:
        units = {index: [index] for index in range(len(dataset))}  # type: ignore[arg-type]
    return list(units.items())


def method_digest(method: ZsadMethod) -> str:
    """sha256 of the method's prompt tensors (names, shapes, values): the checkpoint it runs."""
    digest = hashlib.sha256(method.name.encode())
    for name, tensor in sorted(method.prompt.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def expected_meta(method: ZsadMethod, fewshot: FewShotConfig) -> dict[str, str]:
    """What a bank for ``method`` under ``fewshot`` records about its provenance (:data:`MATCHING_KEYS`)."""
    layers = resolve_layers(fewshot, method.backbone.num_visual_layers)
    return {
        "format": BANK_FORMAT,
        "method": method.name,
        "checkpoint_digest": method_digest(method),
        "backbone": method.backbone.model_name,
        "backbone_weights": method.backbone.weights_id,
        "layers": ",".join(map(str, layers)),
        "stream": fewshot.stream,
        "project": str(fewshot.project).lower(),
        "image_size": str(method.image_size),
    }


def save_bank(bank: MemoryBank, path: Path) -> Path:
    """The bank as safetensors (``layer_<n>`` tensors) with its metadata in the header; atomic."""
    tensors = {f"layer_{layer}": rows.contiguous() for layer, rows in bank.features.items()}
    with atomic_path(path, fsync=True) as tmp:
        save_file(tensors, tmp, metadata=bank.meta)
    return path


def load_bank(path: Path) -> MemoryBank:
    """A bank saved by :func:`save_bank`; one clear line when the file is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"reference: {path.name} is not a readable safetensors file ({exc})") from None
    if meta.get("format") != BANK_FORMAT:
        raise ConfigError(f"reference: {path.name} is not a medzsad memory bank (format {meta.get('format')!r})")
    return MemoryBank({int(name.split("_")[1]): rows for name, rows in tensors.items()}, meta)


def check_bank(bank: MemoryBank, expected: dict[str, str], where: str) -> None:
    """Refuse a bank built for another method, checkpoint, backbone or layer setting."""
    for key in MATCHING_KEYS:
        if bank.meta.get(key) != expected[key]:
            got, want = bank.meta.get(key), expected[key]
            raise ConfigError(f"reference: {where} was built with {key}={got!s:.24}, this run has {want!s:.24}")


def build_bank(
    method: ZsadMethod,
    dataset: Dataset,
    units: list[tuple[Hashable, list[int]]],
    fewshot: FewShotConfig,
    device: torch.device,
    batch_size: int,
    meta: dict[str, str],
) -> MemoryBank:
    """Run ``method`` over the references' samples and keep their patch features (and pseudonymous ids)."""
    indices = [index for _, members in units for index in members]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    ids: list[str] = []

    def batches():
        for batch in loader:
            ids.extend(batch.volume_id[i] or batch.sample_id[i] for i in range(len(batch)))
            yield batch.image.to(device)

    method.to(device).eval()
    bank = collect_bank(method, batches(), fewshot, meta)
    bank.meta.update(reference_ids=",".join(dict.fromkeys(ids)), k=str(len(units)))
    bank.meta["patches"] = str(len(bank))
    return bank


def _member_key(dataset: Dataset, index: int) -> Hashable:
    """What identifies one reference sample inside its dataset (file and slice or frame)."""
    if isinstance(dataset, ManifestDataset):
        record = dataset.records[index]
        return (record.cls_name, record.img_path, record.slice_index, record.slice_axis, record.frame_index)
    if isinstance(dataset, FolderDataset):
        return dataset.entries[index]
    return index


def cache_path(fewshot: FewShotConfig, meta: dict[str, str], dataset: Dataset, units: list, config: RunConfig) -> Path:
    """Where the bank of these references is saved: a name keyed by everything its features depend on,
    down to which slices of a volume are used. Sample keys enter only through a keyed hash
    (:func:`pseudonymous_id`), never as text."""
    members = [_member_key(dataset, index) for _, indices in units for index in indices]
    key = {
        **meta,
        "references": pseudonymous_id(repr(members)),
        "max_bank_size": fewshot.max_bank_size,
        "data": [config.data.pad_to_square, config.data.ct_window, config.data.mri_percentiles],
        "slice_axis": config.data.slice_axis,
        "precision": config.eval.precision,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(fewshot.bank_dir) / f"{meta['method']}-{digest[:20]}.safetensors"


def load_references(
    method: ZsadMethod, config: RunConfig, fewshot: FewShotConfig, device: torch.device, open_source: Callable
) -> References:
    """The bank of ``config.reference`` for ``method``: a saved bank file, or built from the references'
    first ``fewshot.k`` units (and saved), or reused from ``fewshot.bank_dir``."""
    expected = expected_meta(method, fewshot)
    source = Path(str(config.reference))
    if source.suffix == ".safetensors":
        if not source.is_file():
            raise ConfigError(f"reference: memory bank {source.name} not found")
        bank = load_bank(source)
        check_bank(bank, expected, source.name)
        if fewshot.k is not None and str(fewshot.k) != bank.meta.get("k"):
            raise ConfigError(
                f"fewshot.k: the bank {source.name} holds {bank.meta.get('k')} references, not {fewshot.k}"
            )
        return References(bank, source)
    if fewshot.k == 0:
        return References(MemoryBank({}, {**expected, "k": "0", "reference_ids": ""}), None)
    try:
        dataset = open_source()
    except ConfigError as exc:  # name the key: the same folder may be given elsewhere in the config
        raise ConfigError(f"reference: {exc}") from None
    units = reference_units(dataset)[: fewshot.k]
    if not units:
        raise ConfigError(f"reference: no normal references found (split {fewshot.split!r} for a manifest)")
    path = cache_path(fewshot, expected, dataset, units, config)
    if distributed.is_main() and not path.is_file():
        save_bank(build_bank(method, dataset, units, fewshot, device, config.eval.batch_size, expected), path)
    distributed.barrier()  # the bank file exists for every process once this returns
    bank = load_bank(path)
    check_bank(bank, expected, path.name)
    return References(bank, path)


def with_references(
    method: ZsadMethod, config: RunConfig, device: torch.device, open_source: Callable, report: Callable = print
) -> ZsadMethod:
    """``method`` itself without ``reference``; else a :class:`FewShotMethod` with the references' bank.
    Reports the references used (pseudonymous ids) on the main process."""
    if not config.reference or isinstance(method, FewShotMethod):
        return method
    try:
        references = load_references(method, config, config.fewshot, device, open_source)
        wrapped = FewShotMethod(method, references.bank, config.fewshot)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    wrapped.bank_path = references.path
    if distributed.is_main():
        report(describe(references))
    return wrapped


def describe(references: References) -> str:
    bank = references.bank
    ids = bank.reference_ids
    shown = ", ".join(ids[:8]) + (f", ... ({len(ids) - 8} more)" if len(ids) > 8 else "")
    where = f"; bank {references.path}" if references.path is not None else ""
    return (
        f"few-shot: {bank.meta.get('k', '0')} reference(s) [{shown or 'none'}], {len(bank)} patches per layer, "
        f"layers {bank.meta.get('layers', '')}, {bank.meta.get('stream', '')} stream{where}"
    )


def write_references(method: ZsadMethod, output_dir: Path) -> Path | None:
    """``references.csv`` (one pseudonymous reference id per row) beside the run's tables, if few-shot."""
    if not isinstance(method, FewShotMethod) or not distributed.is_main():
        return None
    rows = ["reference_id", *method.bank.reference_ids]
    return atomic_write_text(Path(output_dir) / "references.csv", "\n".join(rows) + "\n")


def bank_tags(method: ZsadMethod) -> dict[str, str]:
    """MLflow tags describing a few-shot run's bank (pseudonymous ids only); empty for zero-shot."""
    if not isinstance(method, FewShotMethod):
        return {}
    meta = method.bank.meta
    tags = {f"fewshot_{key}": meta.get(key, "") for key in ("k", "layers", "stream", "patches")}
    tags["fewshot_references"] = meta.get("reference_ids", "")[:4000]
    tags["fewshot_rules"] = f"{method.fewshot.map_rule}/{method.fewshot.score_rule}"
    return tags
