"""Methods by name."""

from __future__ import annotations

from medzsad.methods.anomalyclip import AnomalyCLIP
from medzsad.methods.base import ZsadMethod
from medzsad.methods.baselines import ClipPromptBaseline, WinClipBaseline
from medzsad.methods.cops import CoPS
from medzsad.methods.faprompt import FAPrompt

METHODS: dict[str, type[ZsadMethod]] = {
    cls.name: cls for cls in (AnomalyCLIP, FAPrompt, CoPS, ClipPromptBaseline, WinClipBaseline)
}


def method_class(name: str) -> type[ZsadMethod]:
    """The method class registered under ``name``; a clear error lists the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}") from None
