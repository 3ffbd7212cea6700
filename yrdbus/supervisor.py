"""Supervision of the bus's child processes for `yrdbus run`.

Each child runs in its own session with its output in ``<var>/log/<name>.log``.
A child that dies while the run goes on is reported with the last lines of its
log; the run goes on without it and ends with a non-zero status. Stopping sends
SIGTERM to every child (in reverse start order), then SIGKILL after a grace period.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: a child that may finish on its own (e.g. the simulator); its exit status 0 is not a failure
    finite: bool = False


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen
    log_path: Path
    started_at: float
    exit_code: int | None = None
    reported: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Death:
    name: str
    exit_code: int
    last_lines: list[str]
    expected: bool

    def describe(self) -> str:
        how = f"killed by signal {-self.exit_code}" if self.exit_code < 0 else f"exit status {self.exit_code}"
        lines = "\n".join(f"    {line}" for line in self.last_lines) or "    (no output)"
        return f"process '{self.name}' stopped ({how}). Last lines of its log:\n{lines}"


def tail(path: Path, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as fh:
            return [line.decode("utf-8", "replace").rstrip("\n") for line in deque(fh, maxlen=n)]
    except OSError:
        return []


class Supervisor:
    def __init__(self, log_dir: Path, base_env: dict[str, str] | None = None):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self.children: list[Child] = []
        self.deaths: list[Death] = []
        self.stopping = False

    def start(self, spec: ChildSpec) -> Child:
        log_path = self.log_dir / f"{spec.name}.log"
        env = {**self.base_env, **spec.env, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(spec.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=_die_with_parent)
        child = Child(spec=spec, proc=proc, log_path=log_path, started_at=time.monotonic())
        self.children.append(child)
        return child

    def get(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def check(self) -> list[Death]:
        """New deaths since the last call: unexpected ones are failures of the run."""
        new = []
        for child in self.children:
            code = child.proc.poll()
            if code is None or child.reported:
                continue
            child.exit_code = code
            child.reported = True
            expected = self.stopping or (child.spec.finite and code == 0)
            death = Death(child.name, code, tail(child.log_path), expected)
            if not expected:
                self.deaths.append(death)
            new.append(death)
        return new

    @property
    def failed(self) -> bool:
        return bool(self.deaths)

    def wait_finite(self, timeout_s: float, on_tick: Callable[[], None] | None = None, tick_s: float = 1.0) -> bool:
        """Wait until every finite child has finished (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if on_tick:
                on_tick()
            if all(not c.running for c in self.children if c.spec.finite):
                return True
            time.sleep(tick_s)
        return False

    def stop(self, grace_s: float = 20.0) -> None:
        self.stopping = True
        for child in reversed(self.children):
            if child.running:
                _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait(5)
        self.check()


try:  # loaded in the parent: the child, between fork and exec, only calls it
    import ctypes

    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the supervisor dies, so no child outlives a crashed run."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
