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
    while "worker ready" not in (tmp_path / "worker.log").read_text() and time.monotonic() < deadline:
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
