"""Fuzzing the alert gateway's request parsing: query strings, Last-Event-ID cursors, tokens, tickets,
WebSocket messages.

The parsing target runs the gateway's own request path (``Gateway._entry``, ``_select``, cursor and
time parsing) on raw query strings and header values: every input is served or refused with 400,
401 or 403 and a message, nothing else. The end-to-end checks send hostile requests and WebSocket
frames to a gateway running on the real broker: never a 5xx, and the gateway goes on serving.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from urllib.parse import quote

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from connectors.gateway import Gateway
from connectors.gateway.access import Forbidden, Unauthorized
from connectors.gateway.app import _parse_time
from connectors.gateway.selection import BadRequest, alert_kinds, parse_cursor
from fuzzing import E2E_EXAMPLES, SQL, fuzz
from gateway_harness import STANDARD_SCOPES, RunningGateway, write_access_file
from schemas.reference import REGIONS, stations
from schemas.settings import Settings

PARAMS = ["region", "station", "min_severity", "kind", "since", "from_time", "ticket", "token", "x"]
GOOD_VALUES = (list(REGIONS) + list(stations()) + ["LOW", "HIGH", "CRITICAL"] + alert_kinds()[:3]
               + ["alerts.to.AH:0:5,alerts.to.AH:1:0", "2025-03-01T08:00:00Z", "2025-03-01T08:00:00"])
HOSTILE_VALUES = ["", ",", ",,", "alerts.to.AH:-1:5", "alerts.to.AH:0:", ":::", "a:b:c", "9" * 400,
                  "alerts.to.AH:0:99999999999999999999999", "\x00", "\u202e", "%", "%%", "ah", "all",
                  "2025-13-45T99:99:99Z", "1e309", "NaN", "..", "../../etc/passwd"] + SQL


@st.composite
def raw_query(draw) -> str:
    """A raw query string: known and unknown parameters, good and hostile values, bad percent-escapes."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(PARAMS) | st.text(max_size=6))
        value = draw(st.sampled_from(GOOD_VALUES) | st.sampled_from(HOSTILE_VALUES) | st.text(max_size=30))
        encode = draw(st.booleans())
        parts.append(f"{quote(name) if encode else name}={quote(value) if encode else value}")
    if draw(st.integers(0, 9)) == 0:
        parts.append(draw(st.text(max_size=40)))
    return "&".join(parts)


@pytest.fixture(scope="module")
def parsing_gateway(tmp_path_factory):
    """A Gateway object (not started: parsing needs no broker) with the standard test tokens."""
    folder = tmp_path_factory.mktemp("fuzz-gateway")
    tokens = write_access_file(folder, STANDARD_SCOPES)
    gw = Gateway(Settings(var_dir=folder), tokens_file=tokens.path, topic_prefix="")
    loop = asyncio.new_event_loop()
    entry = loop.run_until_complete(gw._entry(f"Bearer {tokens['rcc']}", None, False))
    ticket, _ = gw.access.mint_ticket(entry)
    yield gw, tokens, ticket, loop
    loop.close()


@st.composite
def credentials(draw, tokens, ticket) -> tuple[str | None, str | None]:
    """(Authorization header, ticket): valid, tampered, garbage."""
    valid = [f"Bearer {tokens[t]}" for t in STANDARD_SCOPES]
    auth = draw(st.none() | st.sampled_from(valid) | st.sampled_from(["Bearer", "Bearer ", "Basic abc", "bearer x.y",
                                                                       "Bearer rcc.", "Bearer .x", "Bearer rcc"])
                | st.text(max_size=60).map(lambda t: "Bearer " + t)
                | st.sampled_from(valid).map(lambda v: v[:-1] + ("A" if v[-1] != "A" else "B")))
    tick = draw(st.none() | st.just(ticket) | st.text(max_size=80)
                | st.integers(0, len(ticket) - 1).map(lambda i: ticket[:i] + "x" + ticket[i + 1:])
                | st.just(ticket + "é"))
    return auth, tick


def parse_request(gw, loop, query: str, authorization, last_event_id):
    """What the gateway does with a stream request before it attaches to Kafka."""
    params = QueryParams(query)
    entry = loop.run_until_complete(gw._entry(authorization, params.get("ticket"), "token" in params))
    selection = gw._select(entry, params)
    cursor = last_event_id or params.get("since")
    if cursor:
        parse_cursor(cursor)
    if params.get("from_time") and not cursor:
        _parse_time(params["from_time"])
    return selection


@fuzz()
@given(st.data())
def test_fuzz_stream_request_parsing_serves_or_refuses_with_a_message(parsing_gateway, data):
    gw, tokens, ticket, loop = parsing_gateway
    query = data.draw(raw_query())
    authorization, tick = data.draw(credentials(tokens, ticket))
    if tick is not None:
        query += "&ticket=" + quote(tick)
    last_event_id = data.draw(st.none() | st.sampled_from(GOOD_VALUES + HOSTILE_VALUES) | st.text(max_size=60))
    try:
        selection = parse_request(gw, loop, query, authorization, last_event_id)
    except (Unauthorized, BadRequest) as exc:
        assert str(exc)
    except Forbidden as exc:
        assert str(exc) and exc.token_id
    else:
        # alert topics, and the officers' dispositions of them
        assert selection.topics and all(t.startswith("alerts.") or t == "dispositions" for t in selection.topics)
        assert any(t.startswith("alerts.") for t in selection.topics)


@fuzz()
@given(st.text(max_size=200) | st.sampled_from(GOOD_VALUES + HOSTILE_VALUES))
def test_fuzz_cursor_parses_or_is_refused_naming_the_cursor(text):
    try:
        positions = parse_cursor(text)
    except BadRequest as exc:
        assert "cursor" in str(exc)
    else:
        assert positions and all(p >= 0 and o >= 0 for (_, p), o in positions.items())


# =========================================================================== end to end
@pytest.fixture(scope="module")
def live_gateway(kafka, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-live")
    tokens = write_access_file(folder, STANDARD_SCOPES)
    prefix = f"fz{uuid.uuid4().hex[:6]}."
    with RunningGateway(kafka, tokens, prefix) as gw:
        yield gw, tokens


def raw_request(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int | None, bytes]:
    """Send exactly these bytes (no client library cleans them up); the status and the start of the body."""
    host, port = url.removeprefix("http://").split(":")
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode("utf-8", "surrogatepass") + b"\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and b"text/event-stream" in data.split(b"\r\n\r\n", 1)[0]:
                break       # a stream was opened: that is all we wanted to know
    if not data.startswith(b"HTTP/1.1 "):
        return None, data
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = b"".join(body.split(b"\r\n")[1::2])
    return int(head.split(b" ", 2)[1]), body


@fuzz(E2E_EXAMPLES)
@given(st.data())
def test_fuzz_http_requests_get_a_stream_or_a_4xx_with_a_message_never_a_5xx(live_gateway, data):
    gw, tokens = live_gateway
    path = data.draw(st.sampled_from(["/alerts/stream", "/auth/ticket", "/auth/whoami", "/alerts/ws"]))
    query = data.draw(raw_query())
    headers = {}
    auth = data.draw(st.none() | st.sampled_from([f"Bearer {tokens[t]}" for t in STANDARD_SCOPES])
                     | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
    if auth is not None:
        headers["Authorization"] = auth
    lei = data.draw(st.none() | st.sampled_from(GOOD_VALUES + HOSTILE_VALUES[:8]))
    if lei is not None:
        headers["Last-Event-ID"] = lei
    method = "POST" if path == "/auth/ticket" else "GET"
    status, body = raw_request(gw.url, method, f"{path}?{query}", headers)
    assert status is not None and status < 500, (path, query, headers, status, body[:300])
    if status >= 400 and status not in (404, 405) and body.startswith(b"{"):
        problem = json.loads(body)
        assert problem["error"] and problem["message"], problem
    elif status >= 400 and status not in (404, 405):
        assert status == 400, (status, body[:300])     # the HTTP layer's own refusal of a malformed request
    # and the gateway still answers
    assert httpx2.get(gw.url + "/healthz", timeout=5).status_code == 200


def test_websocket_garbage_frames_are_ignored_and_the_gateway_goes_on(live_gateway):
    import websockets.sync.client as ws

    gw, tokens = live_gateway
    url = gw.url.replace("http://", "ws://") + "/alerts/ws?region=AH"
    with ws.connect(url, additional_headers={"Authorization": f"Bearer {tokens['ah-duty']}"},
                    max_size=2 ** 20) as conn:
        hello = json.loads(conn.recv(timeout=10))
        assert hello["type"] == "hello"
        for frame in [b"\x00\xff" * 1000, "{", json.dumps({"type": "subscribe", "region": "ZJ"}),
                      "'); DROP TABLE alerts; --", "x" * 200_000, b"", "\u202e" * 50]:
            conn.send(frame)
        # nothing it sent changed what it reads: still the hello's selection, still open
        conn.ping().wait(5)
    # a frame past the server's limit closes that connection only
    with ws.connect(url, additional_headers={"Authorization": f"Bearer {tokens['ah-duty']}"}) as conn:
        conn.recv(timeout=10)
        conn.send("y" * (17 * 2 ** 20))
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                conn.recv(timeout=1)
            except TimeoutError:
                continue
            except Exception:
                closed = True
        assert closed
    assert httpx2.get(gw.url + "/healthz", timeout=5).status_code == 200
    r = httpx2.get(gw.url + "/auth/whoami", headers={"Authorization": f"Bearer {tokens['rcc']}"}, timeout=5)
    assert r.status_code == 200 and r.json()["token"] == "rcc"
