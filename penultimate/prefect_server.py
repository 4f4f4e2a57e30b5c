"""The embedded default Prefect API: one local `prefect server` (SQLite) that the CLI, the flow
process and every Dask worker point at, started in the background on first use and then reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVER_HOME_ENV = "PENULTIMATE_PREFECT_HOME"
DEFAULT_SERVER_HOME = ".cache/prefect-server"
_STATE = "server.json"


def server_home() -> Path:
    return Path(os.environ.get(SERVER_HOME_ENV, DEFAULT_SERVER_HOME)).expanduser().resolve()


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_state(home: Path) -> dict | None:
    try:
        return json.loads((home / _STATE).read_text())
    except (OSError, ValueError):
        return None


def start_local_server(home: Path | None = None, timeout_s: float = 120.0) -> str:
    """The API URL of the local server under `home`, starting it if it is not running."""
    home = home or server_home()
    state = _read_state(home)
    if state and api_healthy(state["api_url"]):
        return state["api_url"]
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api_url,
    }
    prefect = Path(sys.executable).with_name("prefect")
    with (home / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the command that started it
        )
    deadline = time.monotonic() + timeout_s
    while not api_healthy(api_url):
        if process.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {process.returncode}; see {home}/server.log"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"prefect server not healthy after {timeout_s:.0f}s; see {home}/server.log"
            )
        time.sleep(0.5)
    tmp = home / f".{_STATE}.tmp"
    tmp.write_text(json.dumps({"api_url": api_url, "pid": process.pid}))
    tmp.replace(home / _STATE)
    return api_url


def stop_local_server(home: Path | None = None) -> bool:
    """Stop the server started under `home`; False if none was running."""
    home = home or server_home()
    state = _read_state(home)
    if not state:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state["pid"], signal.SIGTERM)
    (home / _STATE).unlink(missing_ok=True)
    return True
