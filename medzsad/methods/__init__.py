"""Methods: AnomalyCLIP, FAPrompt, CoPS and training-free baselines over the shared backbone."""

from medzsad.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from medzsad.methods.base import LossOutput, MethodConfig, MethodOutput, ZsadMethod
from medzsad.methods.baselines import ClipPromptBaseline, ClipPromptConfig, WinClipBaseline, WinClipConfig
from medzsad.methods.cops import CoPS, CoPSConfig
from medzsad.methods.faprompt import FAPrompt, FAPromptConfig
from medzsad.methods.registry import METHODS, method_class

__all__ = [
    "METHODS",
    "AnomalyCLIP",
    "AnomalyCLIPConfig",
    "ClipPromptBaseline",
    "ClipPromptConfig",
    "CoPS",
    "CoPSConfig",
    "FAPrompt",
    "FAPromptConfig",
    "LossOutput",
    "MethodConfig",
    "MethodOutput",
    "WinClipBaseline",
    "WinClipConfig",
    "ZsadMethod",
    "method_class",
]
