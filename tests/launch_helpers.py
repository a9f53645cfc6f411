"""Starting and stopping real launches from tests: `deepspeed` and `bash launch.sh` commands, each in its own
process group so that a test can SIGKILL a launcher with all its workers and wait until every one is gone."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_components import REPO, cli_env

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_sh_env(folder: Path) -> dict[str, str]:
    """`cli_env()` plus ALIGN_VENV naming a view of this interpreter's venv that launch.sh takes as set up.

    launch.sh reinstalls its venv when the stamp in it does not match pyproject.toml + launch.sh; the view (links
    to this venv's python, deepspeed and align, and the matching stamp) lets a test run launch.sh's real launch
    path without touching the venv the tests run in."""
    view = folder / "venv-view"
    (view / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "deepspeed", "align"):
        link = view / "bin" / name
        if not link.exists():
            link.symlink_to(VENV_BIN / name)
    stamp = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "launch.sh").read_bytes()).hexdigest()
    (view / ".align-installed").write_text(stamp + "\ndev\n")  # line 2: the extras installed (launch.sh's setup)
    return {**cli_env(), "ALIGN_VENV": str(view)}


def start(command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in a new session (its own process group), output appended to `log`."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env or cli_env(),
            cwd=cwd,
            start_new_session=True,
        )


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `proc`'s process group (launcher and workers) and wait until none of it is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for _ in range(600):
        if not group_alive(proc.pid):
            return
        time.sleep(0.05)
    pytest.fail(f"processes of group {proc.pid} still alive after SIGKILL: {group_alive(proc.pid)}")


def wait_for(condition: Callable[[], bool], procs: list[subprocess.Popen[bytes]], logs: list[Path], what: str) -> None:
    """Poll `condition()` every 5 ms until true; fail (killing `procs`) when one of them ends first or after 600 s."""
    deadline = time.monotonic() + 600
    while not condition():
        ended = [p for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            for proc in procs:
                if proc.poll() is None:
                    kill_group(proc)
            tails = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)
            reason = f"exit {ended[0].returncode}" if ended else "timeout"
            pytest.fail(f"{what} not reached ({reason}):\n{tails}")
        time.sleep(0.005)


def finish(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float = 600) -> None:
    """Wait for every launch; each must exit 0. When one fails (or after `timeout`), the others are killed and the
    test fails with the logs' tails."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            kill_group(proc)
    failed = [(log, proc.returncode) for proc, log in zip(procs, logs) if proc.returncode != 0]
    details = "\n".join(f"{log.name}: exit {code}\n{log.read_text(errors='replace')[-3000:]}" for log, code in failed)
    assert not failed, details


__all__ = [
    "REPO",
    "VENV_BIN",
    "cli_env",
    "finish",
    "free_port",
    "group_alive",
    "kill_group",
    "launch_sh_env",
    "start",
    "wait_for",
]
