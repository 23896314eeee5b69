"""Start the MLflow UI on a local store, bound to loopback only.

Overlays of clinical scans are sensitive and the open-source MLflow server has no login, so the
UI listens on 127.0.0.1 (or ::1); reach it from another machine through an SSH tunnel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from medzsad.tracking.config import sqlite_uri

__all__ = ["LOOPBACK_HOSTS", "UIServer", "serve_ui"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# MLflow 3 remembers a GenAI/ML view per browser; this query opens the runs view whatever it remembers.
ML_VIEW = "workflowType=machine_learning"


class UIServer:
    """A running ``mlflow server`` process; use as a context manager or call :meth:`stop`."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def wait_ready(self, timeout_s: float | None = 60.0) -> None:
        """Block until ``/health`` answers; raise with the server's log tail if it never does.

        ``timeout_s=None`` waits for as long as the server process lives (tests on a loaded machine)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"mlflow server not ready after {timeout_s:.0f} s:\n{self._log_tail()}")

    def experiments_url(self) -> str:
        """The experiment list in MLflow's machine-learning view (runs, metrics, artifacts)."""
        return f"{self.url}/#/experiments?{ML_VIEW}"

    def runs_urls(self, store_dir: str | os.PathLike[str]) -> dict[str, str]:
        """Experiment name -> the direct URL of its runs table, for every experiment in the store."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=sqlite_uri(Path(store_dir).resolve() / "mlflow.db"))
        return {
            e.name: f"{self.url}/#/experiments/{e.experiment_id}/runs?{ML_VIEW}"
            for e in client.search_experiments()
            if e.name.startswith("medzsad/")
        }

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C stops it); returns its exit code."""
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            self.stop()
            return 0

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server and every process it started (its own process group): MLflow's job runner
        (``huey_consumer``, ``_job_runner``) would otherwise outlive it, re-parented to init."""
        if os.name != "posix":
            self._stop_process(timeout_s)
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._group_alive() and time.monotonic() < deadline:
            self.process.poll()  # reap the leader as soon as it exits, or it counts as alive
            time.sleep(0.1)
        if self._group_alive():
            self._signal_group(signal.SIGKILL)
        self.process.wait()

    def _stop_process(self, timeout_s: float) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # the server leads its group (start_new_session)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def __enter__(self) -> UIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_port_free(host: str, port: int) -> None:
    """Refuse a busy port at once, instead of waiting for the server to die on it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise OSError(f"port {port} on {host} is in use; choose another port") from None


def serve_ui(
    store_dir: str | os.PathLike[str] = ".",
    host: str = "127.0.0.1",
    port: int = 5000,
    wait: bool = True,
    timeout_s: float | None = 60.0,
    telemetry: bool = False,
) -> UIServer:
    """Start ``mlflow server`` on ``store_dir/mlflow.db`` with artifacts in ``store_dir/mlartifacts``.

    Args:
        store_dir: the folder holding ``mlflow.db`` (the default store of :class:`TrackingConfig`).
        host: a loopback address; anything else is refused.
        port: TCP port.
        wait: return only once the server answers.
        timeout_s: how long to wait for it (``None``: as long as the server process lives).
        telemetry: let the server forward MLflow's UI usage telemetry (off by default).

    Returns:
        The running server; its log goes to ``store_dir/mlflow-ui.log``.
    """
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"serve_ui binds to loopback only ({', '.join(LOOPBACK_HOSTS)}), not {host!r}: the UI shows "
            "clinical overlays and has no login. Use an SSH tunnel (ssh -L 5000:127.0.0.1:5000 host)."
        )
    store = Path(store_dir).resolve()
    db = store / "mlflow.db"
    if not db.exists():
        raise FileNotFoundError(f"no MLflow store at {db}; run an evaluation first or pass store_dir")
    _check_port_free(host, port)
    artifacts = store / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", sqlite_uri(db),
        # Runs logged by medzsad keep their own local artifact folder; runs logged through this
        # server (if someone points a client at it) are proxied into the same folder.
        "--artifacts-destination", str(artifacts),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log_path = store / "mlflow-ui.log"
    env = dict(os.environ)
    if not telemetry:
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["DO_NOT_TRACK"] = "true"
    with open(log_path, "ab") as log:
        # A session (and process group) of its own, so stop() reaches the server's children too, and a
        # Ctrl-C in the terminal reaches medzsad, which then stops the whole group once.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=store, env=env, start_new_session=os.name == "posix"
        )
    url_host = f"[{host}]" if ":" in host else host
    server = UIServer(process, f"http://{url_host}:{port}", log_path)
    if wait:
        server.wait_ready(timeout_s)
    return server
