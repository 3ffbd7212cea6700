"""Supervision of the bus's child processes for `yrdbus run`.

Each child runs in its own session with its output in ``<var>/log/<name>.log``.
A child that dies while the run goes on is reported with the last lines of its
log. With a restart policy (``yrdbus run`` has one) a long-running child that
dies is started again with the same command and environment, after a backoff,
and its log goes on in the same file; one that dies more often than the policy
allows is a crash loop: it is not started again and it is a failure of the run.
Without a policy, and for a finite child (e.g. the simulator), a death is final:
the run goes on without it and ends with a non-zero status. Stopping sends
SIGTERM to every child (in reverse start order), then SIGKILL after a grace period.

Everything happens when the owner calls :meth:`Supervisor.check` (``yrdbus run``
does so every second): a restart waits for the call after its backoff is over.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class RestartPolicy:
    """When a long-running child that died is started again.

    The first restart waits ``backoff_s``, each further one twice as long as the one before, up to
    ``backoff_max_s``; a child that had stayed up ``reset_after_s`` starts from ``backoff_s`` again.
    At most ``max_restarts`` restarts in any ``window_s``: the death after those is a crash loop.
    """
    max_restarts: int = 5
    window_s: float = 300.0
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    reset_after_s: float = 60.0

    def describe(self) -> str:
        return f"at most {self.max_restarts} restarts in {_duration(self.window_s)}"


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: a child that may finish on its own (e.g. the simulator); its exit status 0 is not a failure
    finite: bool = False
    #: started again when it dies, under the supervisor's restart policy (default: a child that is not finite)
    restart: bool | None = None

    @property
    def restartable(self) -> bool:
        return (not self.finite) if self.restart is None else self.restart


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen
    log_path: Path
    started_at: float
    exit_code: int | None = None
    reported: bool = False
    #: the environment it was started with: a restart uses it again
    env: dict[str, str] = field(default_factory=dict)
    #: how often it was started again
    restarts: int = 0
    #: when it was started again (monotonic), within the policy's window
    restart_times: list[float] = field(default_factory=list)
    #: the delay of its next restart
    backoff_s: float = 0.0
    #: when the pending restart is due (monotonic), None when none is pending
    restart_due: float | None = None
    #: the pending restart's note in the log
    restart_note: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def restarting(self) -> bool:
        return self.restart_due is not None


@dataclass
class Death:
    name: str
    exit_code: int
    last_lines: list[str]
    expected: bool
    #: the restart this death leads to (1 for the first in the policy's window), 0 for none
    restart: int = 0
    #: the policy's limit of restarts in its window
    max_restarts: int = 0
    #: seconds until the restart
    delay_s: float = 0.0
    #: this death is one too many: a crash loop, the child is not started again
    gave_up: bool = False
    policy: RestartPolicy | None = None
    #: why it could not be started again (the restart itself failed)
    not_started: str = ""

    @property
    def how(self) -> str:
        return f"killed by signal {-self.exit_code}" if self.exit_code < 0 else f"exit status {self.exit_code}"

    @property
    def last_line(self) -> str:
        return meaningful_line(self.last_lines)

    def describe(self) -> str:
        lines = "\n".join(f"    {line}" for line in self.last_lines) or "    (no output)"
        return f"process '{self.name}' stopped ({self.how}). Last lines of its log:\n{lines}"

    def one_line(self) -> str:
        """The death and what follows it, on one line (a restart, or the end of the restarts)."""
        head = f"process '{self.name}' stopped ({self.how}); last line of its log: {self.last_line or '(no output)'}"
        if self.restart:
            return (f"{head}; restarting it in {_duration(self.delay_s)} "
                    f"(restart {self.restart} of {self.max_restarts} in {_duration(self.policy.window_s)})")
        if self.not_started:
            return f"{head}; it could not be started again: {self.not_started}"
        if self.gave_up:
            return (f"{head}; crash loop: it was restarted {self.max_restarts} times in "
                    f"{_duration(self.policy.window_s)} already, so it is not started again")
        return head


def tail(path: Path, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as fh:
            return [line.decode("utf-8", "replace").rstrip("\n") for line in deque(fh, maxlen=n)]
    except OSError:
        return []


#: the line the supervisor writes into a child's log before each start
_MARK = re.compile(r"^--- \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (starting|restarting)\b")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: lines that say where, not what: traceback frames and the headers of faulthandler's dumps
_NOT_MEANINGFUL = re.compile(r'^\s+File "|^\s*[~^]+\s*$|^(Current thread|Thread) 0x[0-9a-f]+|'
                             r'^Stack \(most recent call first\)|^Extension modules:')


def tail_of_last_start(path: Path, n: int = 20) -> list[str]:
    """The last n lines of the log written since the child's last (re)start."""
    lines = tail(path, n + 200)
    for i in range(len(lines) - 1, -1, -1):
        if _MARK.match(lines[i]):
            lines = lines[i + 1:]
            break
    return lines[-n:]


def meaningful_line(lines: list[str], limit: int = 300) -> str:
    """The last line that says something: not blank, not a traceback frame, not the supervisor's own mark."""
    for raw in reversed(lines):
        line = _ANSI.sub("", raw).strip()
        if line and not _MARK.match(line) and not _NOT_MEANINGFUL.match(_ANSI.sub("", raw)):
            return line if len(line) <= limit else line[:limit - 3] + "..."
    return ""


def _duration(s: float) -> str:
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g} min"
    return f"{s:g} s"


class Supervisor:
    def __init__(self, log_dir: Path, base_env: dict[str, str] | None = None,
                 restart: RestartPolicy | None = None):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self.restart = restart
        self.children: list[Child] = []
        #: the deaths that are failures of the run (a crash loop's last death among them)
        self.deaths: list[Death] = []
        #: the deaths that led to a restart
        self.restarted: list[Death] = []
        self.stopping = False

    def start(self, spec: ChildSpec) -> Child:
        log_path = self.log_dir / f"{spec.name}.log"
        env = {**self.base_env, **spec.env, "PYTHONUNBUFFERED": "1"}
        proc = self._spawn(spec.argv, env, log_path, "starting")
        child = Child(spec=spec, proc=proc, log_path=log_path, started_at=time.monotonic(), env=env,
                      backoff_s=self.restart.backoff_s if self.restart else 0.0)
        self.children.append(child)
        return child

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str], log_path: Path, what: str) -> subprocess.Popen:
        with open(log_path, "ab") as log:   # appended to: a restarted child's earlier output stays readable
            command = shlex.join(argv).replace("\n", "\\n")   # one line, so the child's own lines follow it
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {what}: {command}\n".encode())
            log.flush()
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def get(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def check(self) -> list[Death]:
        """New deaths since the last call (unexpected ones are failures of the run unless they lead to a
        restart: see :attr:`Death.restart`), and the restarts that are due."""
        new = []
        for child in self.children:
            if child.restart_due is not None:
                if self.stopping:
                    child.restart_due = None
                elif time.monotonic() >= child.restart_due:
                    failed = self._restart(child)
                    if failed:
                        self.deaths.append(failed)
                        new.append(failed)
                continue
            code = child.proc.poll()   # reaps it
            if code is None or child.reported:
                continue
            child.exit_code = code
            child.reported = True
            expected = self.stopping or (child.spec.finite and code == 0)
            death = Death(child.name, code, tail_of_last_start(child.log_path), expected)
            if not expected and self.restart is not None and child.spec.restartable:
                self._plan_restart(child, death)
            if death.restart:
                self.restarted.append(death)
            elif not expected:
                self.deaths.append(death)
            new.append(death)
        return new

    def _plan_restart(self, child: Child, death: Death) -> None:
        policy = self.restart
        now = time.monotonic()
        death.policy, death.max_restarts = policy, policy.max_restarts
        if now - child.started_at >= policy.reset_after_s:
            child.backoff_s = policy.backoff_s
        child.restart_times = [t for t in child.restart_times if now - t < policy.window_s]
        if len(child.restart_times) >= policy.max_restarts:
            death.gave_up = True
            return
        death.restart, death.delay_s = len(child.restart_times) + 1, child.backoff_s
        child.restart_times.append(now)
        child.backoff_s = min(child.backoff_s * 2, policy.backoff_max_s)
        child.restart_note = (f"restarting after {death.how} (restart {death.restart} of {policy.max_restarts} "
                              f"in {_duration(policy.window_s)})")
        # Whatever the dead child left in its process group goes too (it might hold what the child held, e.g.
        # the sink's ClickHouse folder, which only one process may open); the restart waits until it is gone.
        _signal_group(child.proc, signal.SIGKILL)
        child.restart_due = now + death.delay_s

    def _restart(self, child: Child) -> Death | None:
        """Start a dead child again, once it and its process group are gone; a Death when it cannot be."""
        if child.proc.poll() is None or _group_members(child.proc.pid):
            _signal_group(child.proc, signal.SIGKILL)   # still there: try again at the next check
            child.restart_due = time.monotonic() + 0.2
            return None
        child.restart_due = None
        last_lines = tail_of_last_start(child.log_path)
        try:
            proc = self._spawn(child.spec.argv, child.env, child.log_path, child.restart_note)
        except OSError as exc:
            return Death(child.name, child.exit_code, last_lines, expected=False,
                         gave_up=True, policy=self.restart, max_restarts=self.restart.max_restarts,
                         not_started=str(exc))
        child.proc, child.started_at, child.exit_code, child.reported = proc, time.monotonic(), None, False
        child.restarts += 1
        return None

    @property
    def failed(self) -> bool:
        return bool(self.deaths)

    @property
    def crash_looped(self) -> list[str]:
        return [d.name for d in self.deaths if d.gave_up]

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
        for child in self.children:
            child.restart_due = None
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
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    """The live processes of a process group (a zombie holds nothing any more, and no init may reap it)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()   # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members
