"""Methods: AnomalyCLIP, FAPrompt, CoPS and training-free baselines over the shared backbone."""

from medzsad.utils.lazy import lazy_exports

# Imported on first use, so that a torch-free submodule (a config section) does not load every method.
_EXPORTS = {
    "AnomalyCLIP": "anomalyclip",
    "AnomalyCLIPConfig": "anomalyclip",
    "LossOutput": "base",
    "MethodConfig": "base",
    "MethodOutput": "base",
    "ZsadMethod": "base",
    "ClipPromptBaseline": "baselines",
    "ClipPromptConfig": "baselines",
    "WinClipBaseline": "baselines",
    "WinClipConfig": "baselines",
    "CoPS": "cops",
    "CoPSConfig": "cops",
    "FAPrompt": "faprompt",
    "FAPromptConfig": "faprompt",
    "FewShotConfig": "fewshot_config",
    "METHODS": "registry",
    "method_class": "registry",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
