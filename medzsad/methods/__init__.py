"""Methods: AnomalyCLIP, FAPrompt, CoPS and training-free baselines over the shared backbone."""

from medzsad.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from medzsad.methods.base import LossOutput, MethodConfig, MethodOutput, ZsadMethod
from medzsad.methods.faprompt import FAPrompt, FAPromptConfig
from medzsad.methods.registry import METHODS, method_class

__all__ = [
    "METHODS",
    "AnomalyCLIP",
    "AnomalyCLIPConfig",
    "FAPrompt",
    "FAPromptConfig",
    "LossOutput",
    "MethodConfig",
    "MethodOutput",
    "ZsadMethod",
    "method_class",
]
