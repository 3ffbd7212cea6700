"""What the gateway tests share: an access file, a gateway running in-process on a free port, alerts on Kafka,
a small SSE client over a raw socket (so a test can stop reading, as a stalled console does), and a webhook
receiver on loopback (which a webhook may target only with `allow_private = true`)."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx2
import pytest
from confluent_kafka import Producer

from connectors.gateway import Gateway
from connectors.gateway.access import hash_token, new_token
from connectors.gateway.app import make_server
from schemas.codec import get_codec
from schemas.settings import Settings

from conftest import free_port

# Cheap scrypt cost for tests only: the format and the check are the same, the work is 1/16.
TEST_N = 2**10


@dataclass
class Tokens:
    """Tokens (in clear, for the test's clients) and the access file made from their hashes."""

    path: Path
    clear: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.clear[name]


def write_access_file(folder: Path, scopes: dict[str, dict], webhooks: str = "") -> Tokens:
    clear: dict[str, str] = {}
    lines: list[str] = []
    for tid, scope in scopes.items():
        token = new_token(tid)
        clear[tid] = token
        lines += ["[[tokens]]", f'id = "{tid}"', f'hash = "{hash_token(token, n=TEST_N)}"']
        for key, value in scope.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path = folder / "gateway.toml"
    path.write_text("\n".join(lines) + "\n" + webhooks)
    return Tokens(path=path, clear=clear)


STANDARD_SCOPES = {
    "ah-duty": {"regions": ["AH"]},
    "zj-duty": {"regions": ["ZJ"]},
    "rcc": {"all": True},
    "pvg": {"stations": ["SH-PVG"]},
}


class RunningGateway:
    """A Gateway served by uvicorn in a thread of the test process, on a free port."""

    def __init__(self, settings: Settings, tokens: Tokens, prefix: str, **options):
        self.gateway = Gateway(settings, tokens_file=tokens.path, topic_prefix=prefix, **options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(self.gateway, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> "RunningGateway":
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            if not self.thread.is_alive():
                raise RuntimeError("the gateway stopped while starting (see the log above)")
            time.sleep(0.1)
        raise TimeoutError("the gateway did not become ready within 60 s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def metric(self, name: str, **labels) -> float:
        text = httpx2.get(self.url + "/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))   # the exposition sorts labels
        for line in text.splitlines():
            if line.startswith(name + ("{" + want + "}" if want else " ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


# --------------------------------------------------------------------------- alerts on Kafka
def withdrawal(alert: dict, reason: str, *, seconds_later: float = 5) -> dict:
    """The version of ``alert`` that withdraws it, as the stream layer sends it (streams.derived.withdrawn)."""
    from streams import derived

    return dict(derived.withdrawn(alert, reason), emitted_at=alert["emitted_at"] + timedelta(seconds=seconds_later))


def derived_alert(*, must_act=("AH",), inform=(), severity="HIGH", kind="CROSS_REGION_HIT", station_id=None,
                  port_code=None, summary=None, **extra) -> dict:
    now = datetime.now(timezone.utc)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    alert_id = extra.pop("alert_id", None) or str(uuid.uuid4())
    record = {
        "alert_id": alert_id, "kind": kind, "severity": severity,
        "rule_id": "cross_region_watchlist_hit", "rule_set_version": "2025.03.1",
        "must_act": list(must_act), "inform": list(inform), "station_id": station_id, "port_code": port_code,
        "subject": "sub_" + uuid.uuid4().hex[:24], "conveyance_id": "MU5411/2025-03-01", "pattern": None,
        "evidence": [str(uuid.uuid4()), str(uuid.uuid4())],
        "occurred_at": now - timedelta(seconds=30), "emitted_at": now,
        "summary": summary or f"Traveller flagged in SH seen at an {'/'.join(must_act)} checkpoint",
        "details": {"first_region": "SH", "hits": "2"},
    }
    record.update(extra)
    return record


class Publisher:
    """Publishes DerivedAlert records, as the stream layer does, to ``<prefix>alerts.to.<R>`` and ``alerts.derived``."""

    def __init__(self, settings: Settings, prefix: str):
        self.prefix = prefix
        self.producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True,
                                  "acks": "all", "linger.ms": 0})
        self.codec = get_codec()

    def publish(self, record: dict, *, to: list[str] | None = None, derived: bool = True, key: str | None = None) -> bytes:
        """Send to the routed topic of each region in ``to`` (default: must_act + inform) and to alerts.derived,
        keyed by the alert id (or ``key``: a record keyed as another alert lands behind it in its partitions)."""
        value = self._produce(record, to, derived, key)
        assert self.producer.flush(30) == 0
        return value

    def close(self) -> None:
        """Release the producer now (not at interpreter exit, when the broker is already gone)."""
        self.producer.flush(10)
        self.producer = None

    def publish_many(self, records: list[dict], *, derived: bool = True) -> None:
        for r in records:
            self._produce(r, None, derived)
        assert self.producer.flush(30) == 0

    def _produce(self, record: dict, to: list[str] | None, derived: bool, key: str | None = None) -> bytes:
        value = self.codec.encode("derived_alert", record)
        regions = to if to is not None else list(dict.fromkeys(list(record["must_act"]) + list(record["inform"])))
        k = (key or record["alert_id"]).encode()
        for r in regions:
            self.producer.produce(f"{self.prefix}alerts.to.{r}", value=value, key=k)
        if derived:
            self.producer.produce(f"{self.prefix}alerts.derived", value=value, key=k)
        return value


def records_on(bootstrap: str, topic: str, kind: str) -> list[tuple[bytes, dict]]:
    """Every record on ``topic`` now, each partition read to its end: (raw value, decoded as ``kind``)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p, 0) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        c.assign(parts)
        seen = {p: 0 for p in ends}
        got: list[tuple[bytes, dict]] = []
        while any(seen[p] < ends[p] for p in ends):
            m = c.poll(5)
            assert m is not None, f"{topic} ended early"
            if m.error():
                continue
            got.append((m.value(), get_codec().decode(m.value(), kind=kind)[1]))
            seen[m.partition()] = m.offset() + 1
        return got
    finally:
        c.close()


# --------------------------------------------------------------------------- a raw SSE client
class RawSSE:
    """An SSE client on a plain socket: it reads only when told to, so it can stall like a frozen console."""

    def __init__(self, url: str, path: str, headers: dict[str, str] | None = None, rcvbuf: int | None = None):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buffer = b""
        self.status: int | None = None
        self.closed = False

    def read_events(self, timeout: float, until=None) -> list[dict]:
        """Read for up to ``timeout`` s (or until ``until(events)`` is true, or the server closes)."""
        events: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            self.sock.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                chunk = None
            except ConnectionResetError:      # the server aborted the connection (a subscriber that stopped reading)
                chunk = b""
            if chunk == b"":
                self.closed = True
            elif chunk:
                self.buffer += chunk
                events += self._parse()
            if until is not None and until(events):
                break
        return events

    def _parse(self) -> list[dict]:
        if self.status is None:
            if b"\r\n\r\n" not in self.buffer:
                return []
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.status = int(head.split(b" ", 2)[1])
        out = []
        # Chunked framing puts size lines between events; an SSE parser ignores lines without a known field.
        text = self.buffer.replace(b"\r\n", b"\n")
        *complete, rest = text.split(b"\n\n")
        self.buffer = rest
        for block in complete:
            ev = {"event": "message", "id": None, "data": ""}
            for line in block.decode("utf-8", "replace").split("\n"):
                field, sep, value = line.partition(":")
                if not sep:
                    continue
                value = value[1:] if value.startswith(" ") else value
                if field in ("event", "id"):
                    ev[field] = value
                elif field == "data":
                    ev["data"] += value
            if ev["data"]:
                ev["json"] = json.loads(ev["data"])
                out.append(ev)
        return out

    def close(self) -> None:
        self.sock.close()


def alerts_of(events: list[dict]) -> list[str]:
    return [e["json"]["alert_id"] for e in events if e["event"] == "alert"]


# --------------------------------------------------------------------------- a webhook receiver
class Receiver:
    """An HTTP endpoint that answers with the statuses it is given, in turn (the last one repeats)."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "at": time.time()})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# a fixture: a test module that uses it imports it (``from gateway_harness import setup``)
@pytest.fixture
def setup(kafka, unique, tmp_path):
    tokens = write_access_file(tmp_path, STANDARD_SCOPES)
    prefix = f"{unique}."
    pub = Publisher(kafka, prefix)
    yield kafka, tokens, prefix, pub
    pub.close()
