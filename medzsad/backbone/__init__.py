"""The shared frozen CLIP backbone: loading, the DPAM image encoder and the promptable text encoder."""

from medzsad.utils.lazy import lazy_exports

# Imported on first use, so importing one submodule (or the CLI) does not load torch.
_EXPORTS = {
    "BackboneConfig": "config",
    "ClipBackbone": "clip",
    "default_device": "clip",
    "TINY_MODEL_CONFIGS": "loading",
    "LoadedClip": "loading",
    "WeightsUnavailableError": "loading",
    "load_clip": "loading",
    "PromptableTextEncoder": "text",
    "DualPathVisionEncoder": "visual",
    "VisualFeatures": "visual",
    "resize_positional_embedding": "visual",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
