"""Secrets: keys and passwords come from files or the environment, are never logged, never committed.

The first test runs a bus on the secured broker (sink with the query endpoint, a stream worker, the
gateway, a station importing an export, a subscriber tailing alerts, an analyst's query, and a station
with a wrong password), every process with its own principal and the secrets in its environment or in
files, then scans every log of the run, the broker's log and everything the processes printed for the
subject key, the gateway token, the SCRAM passwords and the query password, as they are and in base64
and hex. The second scans the repository's tracked files for private keys and secrets.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from conftest import free_port
from connectors.gateway.access import hash_token, new_token
from connectors.store.queryserver import hash_password
from yrdbus.supervisor import ChildSpec, Supervisor

ROOT = Path(__file__).resolve().parents[1]
YRDBUS = [str(Path(sys.executable).with_name("yrdbus"))]


def forms(secret: str) -> set[bytes]:
    """A secret as it could leak: as it is, base64 (standard and URL-safe, padded or not) and hex."""
    raw = secret.encode()
    out = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        b = enc(raw)
        out |= {b, b.rstrip(b"=")}
    return {f for f in out if len(f) >= 12}


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=2).status_code < 500:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def test_no_key_token_or_password_appears_in_any_log_of_a_secured_run(secure_kafka, tmp_path):
    var = tmp_path / "var"
    subject_key = "subject-key-" + secrets.token_hex(16)
    token = new_token("rcc")
    query_password = "query-" + secrets.token_urlsafe(12)
    access = tmp_path / "gateway.toml"
    access.write_text(f'[[tokens]]\nid = "rcc"\nhash = "{hash_token(token)}"\nall = true\n')
    token_file = tmp_path / "rcc.token"
    token_file.write_text(token + "\n")
    key_file = tmp_path / "subject.key"
    key_file.write_text(subject_key)
    query_port, gateway_port = free_port(), free_port()
    common = {"YRDBUS_VAR_DIR": str(var), "YRDBUS_CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}",
              "YRDBUS_QUERY_PORT": str(query_port), "YRDBUS_GATEWAY_PORT": str(gateway_port),
              "YRDBUS_GATEWAY_TOKENS_FILE": str(access), "YRDBUS_SUBJECT_KEY_FILE": str(key_file),
              "YRDBUS_QUERY_USERS": f'{{"analyst": "{hash_password(query_password)}"}}'}
    sup = Supervisor(var / "log", base_env={**os.environ, **common})
    used = ["svc-sink", "svc-streams", "svc-gateway", "station-SH-PVG", "station-JS-NKG"]
    passwords = [secure_kafka.passwords().get(p) for p in used + ["admin", "controller"]]
    try:
        sup.start(ChildSpec("sink", YRDBUS + ["sink", "--group", "yrdbus-sink-secrets"],
                            env=secure_kafka.client_env("svc-sink")))
        sup.start(ChildSpec("worker", YRDBUS + ["worker", "--app-id", "yrdbus-streams-secrets",
                                                "--data-dir", str(var / "streams")],
                            env=secure_kafka.client_env("svc-streams")))
        sup.start(ChildSpec("gateway", YRDBUS + ["gateway", "--log-level", "info"],
                            env=secure_kafka.client_env("svc-gateway")))
        wait_http(f"http://127.0.0.1:{query_port}/ping")
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
        station = sup.start(ChildSpec("station-sh-pvg", YRDBUS + [
            "publish", "--file", str(ROOT / "docs/examples/sh-pvg-clearances-2017-06-05.jsonl"), "--region", "SH"],
            env=secure_kafka.client_env("station-SH-PVG"), finite=True))
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-" + passwords[4] + "\n")
        impostor = sup.start(ChildSpec("station-js-nkg-wrong-password", YRDBUS + ["topics", "list"],
                                       env={**secure_kafka.client_env("station-JS-NKG"),
                                            "YRDBUS_KAFKA_PASSWORD_FILE": str(wrong)}, finite=True))
        tail = sup.start(ChildSpec("subscriber", YRDBUS + ["alerts", "tail", "--json", "--token-file",
                                                           str(token_file), "--from-time", "2017-06-01T00:00Z"],
                                   env={"YRDBUS_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"}))
        analyst = subprocess.run(YRDBUS + ["sql", "SELECT count() FROM yrdbus.clearances", "--json",
                                           "--user", "analyst"],
                                 env={**os.environ, **common, "YRDBUS_QUERY_PASSWORD": query_password},
                                 capture_output=True, timeout=120)
        assert station.proc.wait(120) == 0, (var / "log" / "station-sh-pvg.log").read_text()[-2000:]
        assert impostor.proc.wait(120) != 0
        # a wrong token, a token in a URL, a bad ticket: refused, and not written down either
        for headers, q in (({"Authorization": f"Bearer {token}x"}, ""), ({}, f"?token={token}"),
                           ({}, f"?ticket={token}")):
            assert httpx2.get(f"http://127.0.0.1:{gateway_port}/auth/whoami{q}", headers=headers,
                              timeout=10).status_code == 401
        assert httpx2.get(f"http://127.0.0.1:{gateway_port}/auth/whoami",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
        time.sleep(3)
        assert tail.running and analyst.returncode == 0, (analyst.stdout, analyst.stderr)
    finally:
        sup.stop()
    secrets_ = {"subject key": subject_key, "gateway token": token, "gateway token secret": token.split(".", 1)[1],
                "query password": query_password, **{f"SCRAM password of {p}": pw
                                                     for p, pw in zip(used + ["admin", "controller"], passwords)}}
    logs = sorted((var / "log").glob("*.log")) + sorted(secure_kafka.log_dir.glob("*.log"))
    assert len(logs) >= 7, logs
    texts = {str(p): p.read_bytes() for p in logs}
    texts["analyst stdout+stderr"] = analyst.stdout + analyst.stderr
    assert b"authentication" in texts[str(var / "log" / "station-js-nkg-wrong-password.log")].lower()
    leaks = [(what, where) for what, value in secrets_.items() for where, text in texts.items()
             if any(f in text for f in forms(value))]
    assert leaks == []


# =========================================================================== the repository
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_FILES = re.compile(r"(^|/)(\.env|id_rsa|id_ed25519)$|\.(pem|key|p12|pfx|jks|keystore|token|password)$")
#: a gateway token as `new_token` makes it: an id, a dot, 43 URL-safe characters (256 bits)
TOKEN = re.compile(rb"\b[A-Za-z0-9_-]{2,40}\.[A-Za-z0-9_-]{43}\b")
ASSIGNED = re.compile(rb"YRDBUS_(SUBJECT_KEY|KAFKA_PASSWORD|GATEWAY_TOKEN|QUERY_PASSWORD)[\"']?\s*[=:]\s*[\"']?([^\s\"'$<]{8,})")
JAAS_PASSWORD = re.compile(rb"password=\"[^\"$<{]{8,}\"")


def test_repository_holds_no_private_key_password_or_token():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    problems = []
    for name in (f.decode() for f in files if f):
        if SECRET_FILES.search(name):
            problems.append(f"{name}: a key, certificate store or password file is tracked")
            continue
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        data = path.read_bytes()
        if PEM_PRIVATE.search(data):
            problems.append(f"{name}: a PEM private key")
        for m in TOKEN.finditer(data):
            secret = m.group(0).split(b".", 1)[1]
            # 256 random bits in URL-safe base64 mix cases and digits; dotted code (module.attribute) does not
            if re.search(rb"[A-Z]", secret) and re.search(rb"[a-z]", secret) and re.search(rb"[0-9]", secret):
                problems.append(f"{name}: something shaped like a gateway token: {m.group(0)[:8]!r}...")
        if not name.startswith("tests/"):   # tests make up throw-away values at run time, or use dummies
            for m in ASSIGNED.finditer(data):
                problems.append(f"{name}: {m.group(1).decode()} is given a value: {m.group(2)[:4]!r}...")
        for m in JAAS_PASSWORD.finditer(data):
            problems.append(f"{name}: a password in a JAAS configuration")
    # the one key in the source is the demo key, public on purpose (README, schemas/pseudonym.py)
    from schemas.pseudonym import DEMO_KEY as demo
    holders = [n.decode() for n in files if n and (ROOT / n.decode()).is_file()
               and demo in (ROOT / n.decode()).read_bytes()]
    assert holders == ["schemas/pseudonym.py"], holders
    assert problems == [], "\n".join(problems)
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/var/" in ignored   # where the local CA, the broker's key and the passwords are made
