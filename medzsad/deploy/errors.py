"""The deployment error: one clear line naming the file or setting and the problem (no torch import)."""

from __future__ import annotations


class DeployError(ValueError):
    """A model cannot be exported, or an exported file or deployment setting cannot be used here."""
