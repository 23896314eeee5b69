"""medzsad: zero-shot anomaly detection for medical imaging with prompt-learned CLIP."""

__version__ = "0.1.0"
