"""One quick look at the weight host before a download, so an offline machine fails in seconds.

Without it, huggingface_hub retries a refused or unresolvable host for about 49 s, prints 10-20 lines
of retry noise and ends with a message cut mid-word. A single HEAD request with a short timeout tells
"unreachable" apart from "reachable" (any HTTP answer, even an error status, means the host is there
and the download may proceed with its own error handling).
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_PROBE_TIMEOUT_S = 10.0


def hub_endpoint(pretrained_cfg: dict) -> str:
    """The address open_clip will download from: the Hugging Face endpoint (``HF_ENDPOINT``) for
    ``hf_hub`` weights, which open_clip prefers, else the tag's URL."""
    if pretrained_cfg.get("hf_hub"):
        try:
            from huggingface_hub import constants

            return constants.ENDPOINT
        except ImportError:
            pass
    return pretrained_cfg.get("url", "") or "https://huggingface.co"


def probe_timeout() -> float:
    """Seconds the probe waits, ``MEDZSAD_HUB_TIMEOUT`` (default 10)."""
    try:
        return float(os.environ.get("MEDZSAD_HUB_TIMEOUT", DEFAULT_PROBE_TIMEOUT_S))
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT_S


def unreachable_reason(url: str, timeout_s: float | None = None) -> str | None:
    """``None`` when ``url``'s host answers HTTP; otherwise the network failure in words
    (``"connection refused"``, ``"name not resolved"``, ``"no answer within 10 s"``...)."""
    timeout_s = probe_timeout() if timeout_s is None else timeout_s
    parts = urllib.parse.urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    try:
        with urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # the host answered
    except urllib.error.URLError as exc:
        return _describe(exc.reason, timeout_s)
    except (OSError, ValueError) as exc:
        return _describe(exc, timeout_s)


def _describe(reason: object, timeout_s: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host name not resolved (no DNS or no network)"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout_s:g} s"
    return f"{type(reason).__name__}: {reason}"
