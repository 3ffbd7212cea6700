"""The supervisor of `yrdbus run`: children's logs, deaths reported with their last lines, clean stops."""
from __future__ import annotations

import os
import signal
import sys
import time

from yrdbus.supervisor import ChildSpec, Supervisor


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_killed_during_the_run_is_reported_with_its_last_log_lines(tmp_path):
    sup = Supervisor(tmp_path)
    child = sup.start(ChildSpec("worker", py("import time\nprint('worker ready', flush=True)\ntime.sleep(60)")))
    deadline = time.monotonic() + 10
    while "worker ready" not in (tmp_path / "worker.log").read_text().splitlines() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait(5)
    deaths = sup.check()
    assert [d.name for d in deaths] == ["worker"]
    assert sup.failed
    text = deaths[0].describe()
    assert "killed by signal 9" in text and "worker ready" in text
    sup.stop()


def test_a_finite_child_that_finishes_is_not_a_failure_but_a_crash_is(tmp_path):
    sup = Supervisor(tmp_path)
    sup.start(ChildSpec("simulator", py("print('done')"), finite=True))
    sup.start(ChildSpec("importer", py("import sys; print('bad line 3'); sys.exit(2)"), finite=True))
    assert sup.wait_finite(10, tick_s=0.05)
    deaths = sup.check()
    assert {d.name: d.expected for d in deaths} == {"simulator": True, "importer": False}
    assert [d.name for d in sup.deaths] == ["importer"]
    assert "bad line 3" in sup.deaths[0].describe()


def test_stop_terminates_every_child_and_is_not_reported_as_failure(tmp_path):
    sup = Supervisor(tmp_path)
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\ntime.sleep(60)"
    a = sup.start(ChildSpec("sink", py(code)))
    b = sup.start(ChildSpec("gateway", py("import time; time.sleep(60)")))
    time.sleep(0.3)
    sup.stop(grace_s=5)
    assert not a.running and not b.running
    assert not sup.failed
    assert "bye" in (tmp_path / "sink.log").read_text()


def test_children_do_not_outlive_a_supervisor_that_crashes(tmp_path):
    import subprocess

    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})\n"
        "from yrdbus.supervisor import ChildSpec, Supervisor\n"
        f"sup = Supervisor(__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "c = sup.start(ChildSpec('worker', [sys.executable, '-c', 'import time; time.sleep(60)']))\n"
        "print(c.proc.pid, flush=True)\n"
        "import os; os.kill(os.getpid(), 9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    child_pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{child_pid}/stat").read().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        raise AssertionError("the child outlived its supervisor")


# --------------------------------------------------------------------------- restarts
from yrdbus.supervisor import Death, RestartPolicy  # noqa: E402


def _check_until(sup: Supervisor, done, timeout_s: float = 20.0) -> list[Death]:
    """Call check() as `yrdbus run` does until done(deaths so far) holds; the deaths it reported."""
    deaths: list[Death] = []
    deadline = time.monotonic() + timeout_s
    while not done(deaths):
        assert time.monotonic() < deadline, [d.one_line() for d in deaths]
        deaths += sup.check()
        time.sleep(0.02)
    return deaths


def _lines(path, text: str) -> int:
    """How many lines of the log start with text (the supervisor's mark quotes the script, so not a substring)."""
    return sum(line.startswith(text) for line in path.read_text().splitlines()) if path.exists() else 0


def _wait_for(path, text: str, count: int = 1, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        content = path.read_text() if path.exists() else ""
        if _lines(path, text) >= count:
            return content
        assert time.monotonic() < deadline, content[-2000:]
        time.sleep(0.02)


def test_a_child_killed_with_sigkill_is_restarted_and_the_restart_says_the_signal(tmp_path):
    sup = Supervisor(tmp_path, restart=RestartPolicy(backoff_s=0.05))
    child = sup.start(ChildSpec("sink", py("import os, time\nprint('sink ready', os.getpid(), flush=True)\n"
                                           "time.sleep(60)"), env={"ONLY_FOR_THE_SINK": "yes"}))
    try:
        _wait_for(tmp_path / "sink.log", "sink ready")
        first = child.proc.pid
        os.kill(first, signal.SIGKILL)
        deaths = _check_until(sup, lambda d: d)
        assert [(d.name, d.exit_code, d.restart, d.expected) for d in deaths] == [("sink", -9, 1, False)]
        line = deaths[0].one_line()
        assert "\n" not in line
        assert line.startswith("process 'sink' stopped (killed by signal 9)"), line
        assert f"sink ready {first}" in line and "restarting it in 0.05 s (restart 1 of 5 in 5 min)" in line, line
        assert not sup.failed and sup.restarted == deaths
        _check_until(sup, lambda d: child.restarts == 1)
        assert child.running and child.proc.pid != first
        log = _wait_for(tmp_path / "sink.log", "sink ready", count=2)
        assert f"sink ready {child.proc.pid}" in log
        # the same command and environment
        environ = open(f"/proc/{child.proc.pid}/environ", "rb").read().split(b"\0")
        assert b"ONLY_FOR_THE_SINK=yes" in environ and b"PYTHONUNBUFFERED=1" in environ
    finally:
        sup.stop(grace_s=5)
    assert not child.running and not sup.failed


def test_the_log_file_keeps_the_first_runs_lines(tmp_path):
    runs = tmp_path / "runs"
    code = (f"import sys\nruns = open({str(runs)!r}, 'a+')\nruns.write('x'); runs.flush()\nruns.seek(0)\n"
            "n = len(runs.read())\nprint(f'run {n} says hello', flush=True)\n"
            "if n == 1:\n    raise RuntimeError('the first run fails')\nimport time; time.sleep(60)")
    sup = Supervisor(tmp_path / "log", restart=RestartPolicy(backoff_s=0.05))
    child = sup.start(ChildSpec("worker-1", py(code)))
    try:
        deaths = _check_until(sup, lambda d: d)
        # the last meaningful line of a traceback is the exception, not a frame
        assert "last line of its log: RuntimeError: the first run fails;" in deaths[0].one_line()
        assert "exit status 1" in deaths[0].one_line()
        _check_until(sup, lambda d: child.restarts == 1)
        log = _wait_for(tmp_path / "log" / "worker-1.log", "run 2 says hello")
    finally:
        sup.stop(grace_s=5)
    lines = log.splitlines()
    first = lines.index("run 1 says hello")
    assert "RuntimeError: the first run fails" in lines[first:]
    mark = next(i for i, line in enumerate(lines) if "restarting after exit status 1 (restart 1 of 5" in line)
    assert first < mark < lines.index("run 2 says hello")


def test_the_backoff_doubles_up_to_its_limit_and_starts_again_after_a_long_run(tmp_path):
    hold = tmp_path / "hold"
    code = (f"import os, sys, time\nprint('up', flush=True)\n"
            f"if os.path.exists({str(hold)!r}):\n    print('holding', flush=True)\n    time.sleep(60)\nsys.exit(3)")
    policy = RestartPolicy(max_restarts=20, window_s=300, backoff_s=0.05, backoff_max_s=0.2, reset_after_s=60)
    sup = Supervisor(tmp_path / "log", restart=policy)
    child = sup.start(ChildSpec("gateway", py(code)))
    delays, early = [], []
    try:
        for _ in range(5):
            death = _check_until(sup, lambda d: d)[0]
            # when the death was seen, the restart was set for its delay later (check() restarts nothing sooner)
            due = child.restart_due
            assert death.exit_code == 3 and death.restart == len(delays) + 1, death.one_line()
            delays.append(death.delay_s)
            n = child.restarts
            _check_until(sup, lambda d: child.restarts == n + 1)
            early.append(due - child.started_at)
        assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
        assert all(e <= 0 for e in early), early   # never started before its delay had passed
        # a child that stayed up a minute (its start moved back a minute here) starts from the first delay again
        hold.touch()
        log = tmp_path / "log" / "gateway.log"
        # the run going on may have looked for the file before it existed: then one more death and restart
        more = _check_until(sup, lambda d: _lines(log, "holding") and not child.restarting and child.running)
        assert all(d.delay_s == 0.2 for d in more), [d.one_line() for d in more]
        child.started_at -= 61
        os.kill(child.proc.pid, signal.SIGKILL)
        death = _check_until(sup, lambda d: d)[0]
        assert (death.exit_code, death.delay_s, death.restart) == (-9, 0.05, 6 + len(more))
    finally:
        sup.stop(grace_s=5)
    assert not sup.failed


def test_a_crash_loop_beyond_the_limit_fails_and_is_not_restarted_again(tmp_path):
    policy = RestartPolicy(max_restarts=3, window_s=300, backoff_s=0.01, backoff_max_s=0.05)
    sup = Supervisor(tmp_path, restart=policy)
    child = sup.start(ChildSpec("sink", py("import sys; print('cannot open the store', flush=True); sys.exit(2)")))
    deaths = _check_until(sup, lambda d: d and d[-1].gave_up)
    assert [d.restart for d in deaths] == [1, 2, 3, 0]
    last = deaths[-1]
    assert sup.failed and sup.deaths == [last] and sup.crash_looped == ["sink"]
    line = last.one_line()
    assert line.startswith("process 'sink' stopped (exit status 2); last line of its log: cannot open the store;")
    assert "crash loop: it was restarted 3 times in 5 min already, so it is not started again" in line, line
    assert child.restarts == 3 and not child.restarting and not child.running
    assert sup.check() == [] and child.restarts == 3
    assert _lines(tmp_path / "sink.log", "cannot open the store") == 4
    sup.stop(grace_s=5)
    assert sup.crash_looped == ["sink"]


def test_restarts_longer_ago_than_the_window_do_not_count(tmp_path):
    policy = RestartPolicy(max_restarts=2, window_s=300, backoff_s=0.01)
    sup = Supervisor(tmp_path, restart=policy)
    child = sup.start(ChildSpec("worker-1", py("import sys; sys.exit(1)")))
    try:
        _check_until(sup, lambda d: child.restarts == 2)
        child.restart_times = [t - 301 for t in child.restart_times]   # as if they were five minutes ago
        deaths = _check_until(sup, lambda d: d)
        assert deaths[0].restart == 1 and not deaths[0].gave_up and not sup.failed
    finally:
        sup.stop(grace_s=5)


def test_a_child_that_exits_0_while_the_supervisor_stops_is_not_restarted_but_one_that_exits_on_its_own_is(tmp_path):
    sup = Supervisor(tmp_path, restart=RestartPolicy(backoff_s=0.01))
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    sink = sup.start(ChildSpec("sink", py(code)))
    gateway = sup.start(ChildSpec("gateway", py("print('done early', flush=True)")))
    simulator = sup.start(ChildSpec("simulator", py("print('done')"), finite=True))
    deaths = _check_until(sup, lambda d: gateway.restarts >= 1 and not simulator.running and simulator.reported)
    assert {(d.name, d.exit_code, d.expected, d.restart) for d in deaths} >= {("gateway", 0, False, 1),
                                                                             ("simulator", 0, True, 0)}
    assert simulator.restarts == 0
    _wait_for(tmp_path / "sink.log", "ready")
    sup.stop(grace_s=5)
    assert sink.exit_code == 0 and "bye" in (tmp_path / "sink.log").read_text()
    assert sup.check() == [] and sink.restarts == 0 and not sink.running and not sink.restarting
    assert not sup.failed
    assert (tmp_path / "sink.log").read_text().count(" starting: ") == 1


def test_what_the_dead_child_left_in_its_process_group_is_gone_before_it_starts_again(tmp_path):
    """The sink's ClickHouse folder admits one process: a leftover of the dead one would keep the new one out."""
    lock, marker = tmp_path / "store.lock", tmp_path / "first-run-done"
    code = (
        "import fcntl, os, signal, subprocess, sys, time\n"
        f"fh = open({str(lock)!r}, 'a')\n"
        "try:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    print('store busy', flush=True); sys.exit(1)\n"
        "print('store open', flush=True)\n"
        f"if os.path.exists({str(marker)!r}):\n    time.sleep(60)\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], pass_fds=(fh.fileno(),))\n"
        "print('helper', helper.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    sup = Supervisor(tmp_path / "log", restart=RestartPolicy(backoff_s=0.01))
    child = sup.start(ChildSpec("sink", py(code)))
    try:
        deaths = _check_until(sup, lambda d: d)
        assert deaths[0].exit_code == -9 and deaths[0].restart == 1
        _check_until(sup, lambda d: child.restarts == 1)
        log = _wait_for(tmp_path / "log" / "sink.log", "store open", count=2)
    finally:
        sup.stop(grace_s=5)
    assert _lines(tmp_path / "log" / "sink.log", "store busy") == 0, log
    helper = int(next(line.split()[1] for line in log.splitlines() if line.startswith("helper ")))
    try:
        assert open(f"/proc/{helper}/stat").read().split()[2] == "Z"
    except FileNotFoundError:
        pass


def test_a_child_that_cannot_be_started_again_is_a_failure(tmp_path):
    script = tmp_path / "once.py"
    script.write_text("import os, sys\nos.remove(sys.argv[0])\nprint('gone', flush=True)\nsys.exit(1)\n")
    exe = tmp_path / "python"
    exe.symlink_to(sys.executable)
    sup = Supervisor(tmp_path / "log", restart=RestartPolicy(backoff_s=0.01))
    child = sup.start(ChildSpec("gateway", [str(exe), str(script)]))
    _check_until(sup, lambda d: d)          # its death: a restart is planned
    exe.unlink()                            # and then its program is gone
    deaths = _check_until(sup, lambda d: d)
    assert deaths[0].gave_up and sup.crash_looped == ["gateway"] and child.restarts == 0
    assert "it could not be started again: [Errno 2]" in deaths[0].one_line(), deaths[0].one_line()
    assert "last line of its log: gone;" in deaths[0].one_line()
    sup.stop(grace_s=5)
