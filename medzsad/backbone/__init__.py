"""The shared frozen CLIP backbone: loading, the DPAM image encoder and the promptable text encoder."""

from medzsad.backbone.clip import BackboneConfig, ClipBackbone, default_device
from medzsad.backbone.loading import TINY_MODEL_CONFIGS, LoadedClip, WeightsUnavailableError, load_clip
from medzsad.backbone.text import PromptableTextEncoder
from medzsad.backbone.visual import DualPathVisionEncoder, VisualFeatures, resize_positional_embedding

__all__ = [
    "TINY_MODEL_CONFIGS",
    "BackboneConfig",
    "ClipBackbone",
    "DualPathVisionEncoder",
    "LoadedClip",
    "PromptableTextEncoder",
    "VisualFeatures",
    "WeightsUnavailableError",
    "default_device",
    "load_clip",
    "resize_positional_embedding",
]
