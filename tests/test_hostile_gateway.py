"""The alert gateway against hostile subscribers and webhook targets.

* Subscribers that connect and never read (raw sockets: the request is sent, ``recv`` is never
  called) while alerts flow are disconnected within ``gateway_subscriber_write_timeout_s`` of their
  connection filling up: the server resets the socket, the gateway forgets them (subscriber gauge,
  its own connection set), counts and logs them - while a well-behaved subscriber alongside gets
  every alert, an idle one (nothing for its selection) stays connected, and a disconnected one
  resumes from its last event id without missing anything.
* Webhook targets on loopback, private, link-local addresses or with another scheme are refused
  when the access file is loaded, unless the webhook allows it by name (``allow_private = true``);
  a name that resolves to such an address at delivery time is not posted to.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
from types import SimpleNamespace

import pytest

from connectors.gateway import egress
from connectors.gateway.access import AccessFile, AccessFileError
from connectors.gateway.egress import ForbiddenTarget, address_rule, resolve_target
from connectors.gateway.metrics import GatewayMetrics
from connectors.gateway.selection import TopicNames
from connectors.gateway.webhooks import WebhookWorker, load_webhooks
from schemas.codec import get_codec

from gateway_harness import (STANDARD_SCOPES, Publisher, RawSSE, Receiver, RunningGateway, alerts_of, derived_alert,  # noqa: F401
                             setup,  # a fixture
                             write_access_file)

WRITE_TIMEOUT_S = 2.0
SECRET_ENV = "YRDBUS_TEST_HOSTILE_SECRET"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def never_reading(url: str, path: str, headers: dict[str, str], websocket: bool = False) -> socket.socket:
    """A client that sends its request and never calls recv (a small receive window fills sooner)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        head += (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n")
    else:
        head += "Accept: text/event-stream\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((head + "\r\n").encode())
    return sock


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Read what is left; True when the server closed (EOF or reset) before ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(1 << 20) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


def wait_until(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} (not within {timeout:g} s)"
        time.sleep(step)


# =========================================================================== subscribers that never read
def test_subscribers_that_never_read_are_disconnected_in_time_and_the_others_are_served(setup, caplog):
    kafka, tokens, prefix, pub = setup
    caplog.set_level(logging.WARNING, logger="yrdbus.gateway")
    n_sse, n_ws = 6, 2
    with RunningGateway(kafka, tokens, prefix, write_timeout_s=WRITE_TIMEOUT_S) as gw:
        healthy = RawSSE(gw.url, "/alerts/stream?region=AH", bearer(tokens["ah-duty"]))
        healthy.read_events(10, until=lambda evs: evs)
        idle = RawSSE(gw.url, "/alerts/stream?region=ZJ", bearer(tokens["zj-duty"]))   # nothing comes for ZJ
        idle.read_events(10, until=lambda evs: evs)
        idle_since = time.monotonic()
        # one that reads its hello, then stops (a frozen console) and later comes back with its last event id
        frozen = RawSSE(gw.url, "/alerts/stream?region=AH", bearer(tokens["rcc"]), rcvbuf=4096)
        frozen_events = frozen.read_events(10, until=lambda evs: evs)
        stalled = [never_reading(gw.url, "/alerts/stream?region=AH", bearer(tokens["rcc"])) for _ in range(n_sse)]
        stalled += [never_reading(gw.url, "/alerts/ws?region=AH", bearer(tokens["ah-duty"]), websocket=True)
                    for _ in range(n_ws)]
        wait_until(lambda: gw.metric("yrdbus_gateway_subscribers", kind="sse") == n_sse + 3
                   and gw.metric("yrdbus_gateway_subscribers", kind="ws") == n_ws, 20, "the subscribers attached")

        def disconnected(kind: str) -> float:
            return sum(gw.metric("yrdbus_gateway_subscribers_disconnected_total", kind=kind, reason=r)
                       for r in ("write_timeout", "drain_timeout"))

        published: list[str] = []
        received: list[str] = []
        padding = "x" * 32000          # big alerts fill the never-read connections' buffers sooner
        started = time.monotonic()
        while disconnected("sse") < n_sse + 1 or disconnected("ws") < n_ws:
            assert time.monotonic() - started < WRITE_TIMEOUT_S + 15, \
                f"not disconnected: sse {disconnected('sse')}/{n_sse + 1}, ws {disconnected('ws')}/{n_ws}"
            batch = [derived_alert(must_act=["AH"], details={"pad": padding}) for _ in range(10)]
            pub.publish_many(batch, derived=False)
            published += [a["alert_id"] for a in batch]
            target = len(published)
            received += alerts_of(healthy.read_events(
                10, until=lambda evs: len(received) + len(alerts_of(evs)) >= target))
        elapsed = time.monotonic() - started
        # a write must have waited the whole time before the cut, and the cut came soon after it could
        assert WRITE_TIMEOUT_S <= elapsed < WRITE_TIMEOUT_S + 15, elapsed
        assert gw.metric("yrdbus_gateway_subscribers_disconnected_total", kind="sse", reason="write_timeout") >= n_sse

        # the server reset them: each socket reads to its end at once
        assert all(closed_by_server(s, 10) for s in stalled)
        # ... and the gateway let go of them: its subscribers and its own connections
        wait_until(lambda: gw.metric("yrdbus_gateway_subscribers", kind="sse") == 2
                   and gw.metric("yrdbus_gateway_subscribers", kind="ws") == 0, 10, "the subscribers detached")
        ports = {s.getsockname()[1] for s in stalled + [frozen.sock]}
        wait_until(lambda: not ports & {p.client[1] for p in list(gw.server.server_state.connections)
                                        if getattr(p, "client", None)}, 10, "the server closed those connections")
        # the log says so, without a token
        cuts = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
        assert len(cuts) == n_sse + 1 + n_ws, cuts
        assert all("rcc" in m or "ah-duty" in m for m in cuts)
        assert not any(tokens[t] in m for m in cuts for t in STANDARD_SCOPES)

        # the well-behaved subscriber got every alert, once, and is still connected
        received += alerts_of(healthy.read_events(10, until=lambda evs: len(received) + len(alerts_of(evs))
                                                  >= len(published)))
        assert sorted(received) == sorted(published) and not healthy.closed
        # the idle one (no alert for its selection) is still there, well past the limit
        wait_until(lambda: time.monotonic() - idle_since > 2 * WRITE_TIMEOUT_S, 10, "time passes")
        idle.read_events(0.3)
        assert not idle.closed and idle.status == 200

        # the frozen console: what reached it before the reset, then the rest from its last event id
        frozen_events += frozen.read_events(5)
        assert frozen.closed
        last_id = [e for e in frozen_events if e["id"]][-1]["id"]
        before = alerts_of(frozen_events)
        back = RawSSE(gw.url, "/alerts/stream?region=AH", {**bearer(tokens["rcc"]), "Last-Event-ID": last_id})
        events = back.read_events(30, until=lambda evs: len(before) + len(alerts_of(evs)) >= len(published))
        assert events[0]["event"] == "hello"
        assert sorted(before + alerts_of(events)) == sorted(published)
        for s in stalled:
            s.close()
        for c in (healthy, idle, frozen, back):
            c.close()


class _Transport:
    """What WriteGuard sees of a connection: its write buffer (a list of sizes, one per look) and abort()."""

    def __init__(self, sizes):
        self.sizes = list(sizes)
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        if self.aborted:
            return 0
        return self.sizes.pop(0) if len(self.sizes) > 1 else self.sizes[0]

    def abort(self) -> None:
        self.aborted = True


def test_write_guard_aborts_a_write_that_does_not_complete_and_an_unread_end_but_not_a_slow_reader():
    import asyncio

    from connectors.gateway.guard import TRANSPORT, SubscriberStalled, WriteGuard

    metrics = GatewayMetrics()

    def count(kind, reason):
        return metrics.disconnected.labels(kind, reason)._value.get()

    def guard(transport, timeout_s=0.3, on_cut=None):
        scope = {"extensions": {TRANSPORT: transport} if transport else {}, "client": ("192.0.2.9", 50000)}
        return WriteGuard(scope, "sse", timeout_s, metrics, who="rcc", on_cut=on_cut)

    async def wait_for(predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    async def main():
        # writes that complete are let through, however many
        t = _Transport([0])
        g = guard(t)
        for _ in range(3):
            assert await g.write(lambda: asyncio.sleep(0.01))
        assert not t.aborted
        # a write that waits longer than the time: the connection is aborted, the feed cut, once
        cut = []
        t = _Transport([90_000])
        g = guard(t, on_cut=lambda: cut.append(True))
        never = asyncio.Event()
        started = time.monotonic()
        assert not await g.write(never.wait)
        assert 0.3 <= time.monotonic() - started < 2.0
        assert t.aborted and cut == [True] and count("sse", "write_timeout") == 1
        assert not await g.write(lambda: asyncio.sleep(0)) and cut == [True]
        # the stream ended, and what is left in the buffer is never taken: aborted (drain_timeout)
        t = _Transport([5000])
        guard(t).linger()
        await wait_for(lambda: t.aborted)
        assert count("sse", "drain_timeout") == 1
        # the stream ended and the client reads it, slowly but steadily: left alone until it is all sent
        t = _Transport(list(range(5000, 0, -250)) + [0])
        slow = guard(t, timeout_s=0.2)
        slow.linger()
        await wait_for(lambda: t.sizes == [0], timeout=10)
        assert not t.aborted and count("sse", "drain_timeout") == 1
        # served without the transport (not by make_server): the stalled write ends the response instead
        g = guard(None)
        with pytest.raises(SubscriberStalled):
            await g.wrap_send(lambda message: never.wait())({"type": "http.response.body"})

    asyncio.run(main())


# =========================================================================== webhook targets
def load(tmp_path, url: str, extra: str = "") -> list:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[[webhooks]]\nname = "target"\nurl = "{url}"\nsecret_env = "{SECRET_ENV}"\nall = true\n{extra}\n')
    return load_webhooks(AccessFile.load(path), TopicNames(""), attempts=3, backoff_s=0.01, backoff_max_s=0.1,
                         timeout_s=1.0)


@pytest.mark.parametrize("url, rule", [
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("http://10.0.0.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::ffff:192.168.1.10]/hook", "private"),
    ("http://0.0.0.0:80/hook", "unspecified"),
    ("ftp://x/hook", "http:// or https://"),
])
def test_webhook_targets_inside_the_network_or_not_http_are_refused_at_load(tmp_path, monkeypatch, url, rule):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    with pytest.raises(AccessFileError) as err:
        load(tmp_path, url)
    message = str(err.value)
    assert "webhooks[0] (name 'target'), field `url`" in message and rule in message, message
    if rule in ("loopback", "private", "link-local"):
        assert "allow_private = true" in message


def test_a_private_target_allowed_by_name_loads_but_never_an_unspecified_one(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    [spec] = load(tmp_path, "http://127.0.0.1:9000/hook", "allow_private = true")
    assert spec.allow_private and spec.url == "http://127.0.0.1:9000/hook"
    with pytest.raises(AccessFileError, match="unspecified address.*never a webhook target"):
        load(tmp_path, "http://0.0.0.0:9000/hook", "allow_private = true")
    with pytest.raises(AccessFileError, match="field `allow_private`: expected true or false"):
        load(tmp_path, "http://127.0.0.1:9000/hook", 'allow_private = "yes"')


def test_address_rules_cover_mapped_and_translated_forms():
    assert address_rule("93.184.216.34") is None and address_rule("2606:2800:220:1::1") is None
    for address, rule in [("127.8.9.10", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
                          ("172.16.5.4", "private"), ("192.168.0.1", "private"), ("fd12::1", "private"),
                          ("fe80::1", "link-local"), ("::ffff:169.254.169.254", "link-local"),
                          ("64:ff9b::a00:1", "private"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
                          ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "reserved"),
                          ("100.64.0.1", "not-global")]:
        assert address_rule(address) == rule, address


def test_resolution_at_delivery_is_checked_and_the_request_goes_to_the_checked_address():
    import asyncio

    def resolver(answer):
        async def resolve(host, port):
            return answer
        return resolve

    async def main():
        with pytest.raises(ForbiddenTarget, match=r"host 'hooks\.example\.com' resolves to 10\.1\.2\.3, a private"):
            await resolve_target("https://hooks.example.com/h", allow_private=False, resolver=resolver(["10.1.2.3"]))
        # one good address is not enough when another one is refused (which one is used is DNS's choice)
        with pytest.raises(ForbiddenTarget, match="link-local"):
            await resolve_target("https://hooks.example.com/h", allow_private=False,
                                 resolver=resolver(["93.184.216.34", "::ffff:169.254.169.254"]))
        target = await resolve_target("https://hooks.example.com:8443/h?x=1", allow_private=False,
                                      resolver=resolver(["93.184.216.34"]))
        assert target.url == "https://93.184.216.34:8443/h?x=1"
        assert target.headers == {"Host": "hooks.example.com:8443"}
        assert target.extensions == {"sni_hostname": "hooks.example.com"}
        allowed = await resolve_target("http://hooks.internal/h", allow_private=True, resolver=resolver(["10.1.2.3"]))
        assert allowed.url == "http://10.1.2.3/h" and allowed.headers == {"Host": "hooks.internal"}

    asyncio.run(main())


class _Client:
    def __init__(self):
        self.posts = []

    async def post(self, url, **kwargs):
        self.posts.append((url, kwargs))
        return SimpleNamespace(status_code=204, reason_phrase="No Content")


class _Producer:
    def __init__(self):
        self.sent = []

    async def send_and_wait(self, topic, value, key=None, headers=None):
        self.sent.append((topic, value, dict(headers)))


def test_a_name_that_resolves_to_a_private_address_at_delivery_is_not_posted_to(tmp_path, monkeypatch):
    """DNS said something public when the file was loaded; at delivery it says 10.0.0.7 (rebinding)."""
    import asyncio

    monkeypatch.setenv(SECRET_ENV, "s3cret")
    monkeypatch.setattr(egress.socket, "getaddrinfo",
                        lambda host, port, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))])
    [spec] = load(tmp_path, "https://hooks.example.com/alerts")
    answers = {"now": ["10.0.0.7"]}

    async def resolver(host, port):
        assert host == "hooks.example.com"
        return answers["now"]

    monkeypatch.setattr(egress, "_getaddrinfo", resolver)
    metrics, client, producer = GatewayMetrics(), _Client(), _Producer()
    worker = WebhookWorker(spec, bootstrap="unused:9092", names=TopicNames(""), client=client, producer=producer,
                           metrics=metrics)
    alert = derived_alert(must_act=["AH"])
    value = get_codec().encode("derived_alert", alert)
    record = SimpleNamespace(topic="alerts.derived", partition=0, offset=41, key=alert["alert_id"].encode(),
                             value=value)

    asyncio.run(worker.handle(record))
    assert client.posts == []                                   # nothing went to 10.0.0.7
    [(topic, raw, headers)] = producer.sent                     # the alert is dead-lettered, with the reason
    assert topic == "dlq.webhooks" and raw == value
    assert headers["reason"] == b"forbidden_address" and b"10.0.0.7" in headers["error"]
    assert metrics.webhook_failures.labels("target", "forbidden_address")._value.get() == 1

    answers["now"] = ["93.184.216.34"]                          # public again: posted, to the address checked
    second = derived_alert(must_act=["AH"])
    record2 = SimpleNamespace(topic="alerts.derived", partition=0, offset=42, key=b"k",
                              value=get_codec().encode("derived_alert", second))
    asyncio.run(worker.handle(record2))
    [(url, kwargs)] = client.posts
    assert url == "https://93.184.216.34/alerts" and kwargs["headers"]["Host"] == "hooks.example.com"
    assert kwargs["extensions"] == {"sni_hostname": "hooks.example.com"} and kwargs["follow_redirects"] is False


def test_a_webhook_on_loopback_allowed_by_name_is_delivered(kafka, unique, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    receiver = Receiver([200])
    try:
        tokens = write_access_file(tmp_path, {}, (
            f'[[webhooks]]\nname = "internal"\nurl = "{receiver.url}"\nsecret_env = "{SECRET_ENV}"\n'
            f'regions = ["AH"]\nallow_private = true\n'))
        pub = Publisher(kafka, f"{unique}.")
        with RunningGateway(kafka, tokens, f"{unique}.") as gw:
            alert = derived_alert(must_act=["AH"])
            pub.publish(alert)
            [request] = receiver.wait_for(1)
            assert json.loads(request["body"])["alert"]["alert_id"] == alert["alert_id"]
            assert gw.metric("yrdbus_gateway_alerts_delivered_total", kind="webhook") == 1
        pub.close()
    finally:
        receiver.close()
    # and the same receiver without the permission is refused before anything starts
    tokens.path.write_text(tokens.path.read_text().replace("allow_private = true\n", ""))
    refused = r"webhooks\[0\] \(name 'internal'\), field `url`: 127\.0\.0\.1 is a loopback"
    with pytest.raises(AccessFileError, match=refused):
        load_webhooks(AccessFile.load(tokens.path), TopicNames(""), attempts=1, backoff_s=0, backoff_max_s=0,
                      timeout_s=1)
