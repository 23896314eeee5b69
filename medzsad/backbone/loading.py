"""Building a frozen open_clip CLIP model from a pretrained tag, a local file, or a tiny test config.

Three sources of weights, in the order a user meets them:

* an open_clip pretrained tag (``pretrained="openai"``): the normal hub download, cached by
  open_clip / huggingface_hub;
* a local file (``weights_path=...``): the OpenAI archive (TorchScript or plain state dict, OpenAI key
  layout) or an open_clip checkpoint (``{"state_dict": ...}`` or a bare open_clip state dict), also
  as safetensors;
* no weights (``pretrained=None``): random initialisation, used by the tests and the demo with the
  tiny configs in :data:`TINY_MODEL_CONFIGS`.

Offline use never waits on the network: with ``offline=True`` (or ``HF_HUB_OFFLINE=1``) a weight file
that is not in the local cache fails at once with a message saying how to pass a local file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, build_model_from_openai_state_dict
from open_clip.tokenizer import SimpleTokenizer

from medzsad.backbone.network import hub_endpoint, unreachable_reason


class WeightsUnavailableError(RuntimeError):
    """The backbone weights cannot be obtained (offline, missing file, unreadable file)."""


# Tiny random-weight architectures for tests and smoke runs. "medzsad-tiny" is the architecture of the
# parity fixtures (vision width 64, 24 layers; text width 72 = embed dim, which FAPrompt and CoPS need).
TINY_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "medzsad-tiny": {
        "embed_dim": 72,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": 64, "patch_size": 14, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 72, "heads": 1, "layers": 12},
    },
    "medzsad-tiny-fast": {
        "embed_dim": 72,
        "vision_cfg": {"image_size": 224, "layers": 8, "width": 64, "patch_size": 16, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 72, "heads": 1, "layers": 12},
    },
}

_OFFLINE_HINT = (
    "Pass a local weights file instead: backbone.weights_path=/models/ViT-L-14-336px.pt (the OpenAI archive "
    "or an open_clip checkpoint); set backbone.offline=true to never try the network; or run once with "
    "network access so open_clip caches the download. To try the commands without weights: backbone=tiny."
)


@dataclass(frozen=True)
class LoadedClip:
    """A frozen CLIP model and where its weights came from.

    Attributes:
        model: the open_clip ``CLIP`` module, in eval mode with ``requires_grad=False`` everywhere.
        model_name: open_clip architecture name (or the tiny config name).
        weights_id: ``"<tag>"``, ``"file:<sha256 prefix>"`` or ``"random:<seed>"``; recorded in checkpoints.
        weights_sha256: sha256 of the weight file, or ``None`` for random weights.
    """

    model: CLIP
    model_name: str
    weights_id: str
    weights_sha256: str | None


def load_clip(
    model_name: str = "ViT-L-14-336",
    pretrained: str | None = "openai",
    weights_path: str | os.PathLike[str] | None = None,
    offline: bool = False,
    seed: int = 0,
    quick_gelu: bool = True,
) -> LoadedClip:
    """Build a frozen CLIP model.

    Args:
        model_name: an open_clip model name (``open_clip.list_models()``) or a key of
            :data:`TINY_MODEL_CONFIGS`. Ignored for OpenAI-layout files, whose architecture is read
            from the state dict.
        pretrained: open_clip pretrained tag used when ``weights_path`` is not given; ``None`` means
            random weights (seeded with ``seed``).
        weights_path: local weight file; takes precedence over ``pretrained``.
        offline: never touch the network; fail at once when the weights are not cached.
        seed: seed for random initialisation when no weights are used.
        quick_gelu: activation for open_clip-layout local files (OpenAI-trained weights need QuickGELU;
            OpenAI-layout files and pretrained tags set it themselves).

    Raises:
        WeightsUnavailableError: offline without a cached download, missing or unreadable file.
    """
    if weights_path is not None:
        model, sha = _load_from_file(model_name, Path(weights_path), quick_gelu)
        name = model_name
        weights_id = f"file:{sha[:16]}"
    elif pretrained:
        model, sha = _load_from_hub(model_name, pretrained, offline)
        name, weights_id = model_name, pretrained
    else:
        model = _build_random(model_name, seed)
        name, weights_id, sha = model_name, f"random:{seed}", None
    return LoadedClip(model=_freeze(model), model_name=name, weights_id=weights_id, weights_sha256=sha)


def _freeze(model: CLIP) -> CLIP:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _build_random(model_name: str, seed: int, quick_gelu: bool = False) -> CLIP:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if model_name in TINY_MODEL_CONFIGS:
            cfg = TINY_MODEL_CONFIGS[model_name]
            return CLIP(
                embed_dim=cfg["embed_dim"],
                vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
                text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
                quick_gelu=True,
            )
        if model_name not in open_clip.list_models():
            raise WeightsUnavailableError(
                f"unknown backbone model {model_name!r}: use an open_clip model name "
                f"(open_clip.list_models()) or one of {sorted(TINY_MODEL_CONFIGS)}"
            )
        return open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        # Building a model must not shift the caller's random stream (prompt init is seeded after it).
        torch.random.set_rng_state(generator_state)


def file_sha256(path: Path, chunk_size: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, a plain torch file, or a TorchScript archive, without pickle."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # The OpenAI release is a TorchScript archive, which weights_only torch.load refuses.
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:
            raise WeightsUnavailableError(
                f"{path}: not a readable weights file (tried torch.load(weights_only=True) and "
                f"torch.jit.load): {exc.__class__.__name__}"
            ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_openai_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return "visual.proj" in state_dict and "visual.transformer.resblocks.0.attn.in_proj_weight" in state_dict


def _load_from_file(model_name: str, path: Path, quick_gelu: bool = False) -> tuple[CLIP, str]:
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file not found")
    state_dict = _read_state_dict(path)
    sha = file_sha256(path)
    if _is_openai_layout(state_dict):
        # The architecture is read off the tensors' shapes, so any OpenAI-layout ViT loads (tiny ones too).
        float_sd = {k: v.float() for k, v in state_dict.items()}
        model = build_model_from_openai_state_dict(float_sd)
        return model.float(), sha
    model = _build_random(model_name, seed=0, quick_gelu=quick_gelu)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)[:200]
        raise WeightsUnavailableError(f"{path}: does not match backbone {model_name!r} ({first})") from None
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{path}: does not match backbone {model_name!r} "
            f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    return model, sha


def _hub_offline_requested(offline: bool) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _load_from_hub(model_name: str, pretrained: str, offline: bool) -> tuple[CLIP, str | None]:
    if pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
        raise WeightsUnavailableError(
            f"open_clip has no pretrained tag {pretrained!r} for {model_name!r} "
            f"(known: {open_clip.list_pretrained_tags_by_model(model_name)}). {_OFFLINE_HINT}"
        )
    # OpenAI-trained weights need QuickGELU; open_clip records that in the tag's config.
    quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    cached = _cached_weight_file(model_name, pretrained)
    if cached is not None:
        return _load_from_file(model_name, cached, quick_gelu)
    if _hub_offline_requested(offline):
        raise WeightsUnavailableError(
            f"offline mode: weights {model_name}/{pretrained} are not in the local cache. {_OFFLINE_HINT}"
        )
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    endpoint = hub_endpoint(pretrained_cfg)
    reason = unreachable_reason(endpoint)  # one quick probe instead of a minute of retries
    if reason is not None:
        raise WeightsUnavailableError(
            f"weights {model_name}/{pretrained} are not cached and {endpoint} cannot be reached ({reason}). "
            f"{_OFFLINE_HINT}"
        )
    try:
        path = Path(open_clip.download_pretrained(pretrained_cfg))
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise WeightsUnavailableError(
            f"could not download {model_name}/{pretrained} ({exc.__class__.__name__}: {first_line}). {_OFFLINE_HINT}"
        ) from None
    return _load_from_file(model_name, path, quick_gelu)


def _cached_weight_file(model_name: str, pretrained: str) -> Path | None:
    """Return the cached weight file for a tag without any network access, or None."""
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    parts = hub.strip("/").split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    for name in ([filename] if filename else []) + [
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
    ]:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def clip_tokenizer(model_name: str) -> SimpleTokenizer:
    """The tokenizer open_clip pairs with ``model_name`` (the CLIP BPE tokenizer for the tiny configs).

    The text encoder reads each prompt's feature at its end-of-text token, found as the largest token
    id (``argmax``), and ``medzsad.prompts`` relies on the same rule. That holds for the CLIP BPE
    vocabulary, where EOT is the last id; a model with another tokenizer (SigLIP, multilingual models)
    is refused here rather than silently reading the wrong position.

    Raises:
        ValueError: naming the model, when its tokenizer cannot be built or follows another EOT rule.
    """
    if model_name in TINY_MODEL_CONFIGS:
        return SimpleTokenizer()
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # e.g. a Hugging Face tokenizer whose package is not installed
        raise ValueError(
            f"backbone {model_name!r}: its tokenizer cannot be built ({exc.__class__.__name__}: {exc}); "
            "medzsad needs a CLIP BPE tokenizer"
        ) from None
    eot, vocab = getattr(tokenizer, "eot_token_id", None), getattr(tokenizer, "vocab_size", None)
    if not isinstance(tokenizer, SimpleTokenizer) or eot is None or eot != vocab - 1:
        raise ValueError(
            f"backbone {model_name!r}: its tokenizer ({type(tokenizer).__name__}) does not end prompts with "
            "the largest token id; medzsad finds the end-of-text token as the argmax of the ids (the CLIP BPE "
            "rule) and cannot run this model"
        )
    return tokenizer
