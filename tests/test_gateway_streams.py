"""The gateway's streams on the real broker: resumption without loss, a stalled subscriber, WebSocket, the tail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx2
from websockets.sync.client import connect as ws_connect

from gateway_harness import (  # noqa: F401  (setup: a fixture)
    RawSSE, RunningGateway, alerts_of, derived_alert, setup, withdrawal)
from conftest import free_port

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_console_that_reconnects_with_last_event_id_misses_nothing_and_gets_nothing_twice(setup):
    kafka, tokens, prefix, pub = setup
    with RunningGateway(kafka, tokens, prefix) as gw:
        first = [derived_alert(must_act=["AH"], summary=f"first {i}") for i in range(5)]
        s = RawSSE(gw.url, "/alerts/stream", bearer(tokens["ah-duty"]))
        s.read_events(10, until=lambda evs: evs)
        for a in first:
            pub.publish(a)
        events = s.read_events(10, until=lambda evs: len(alerts_of(evs)) >= 5)
        assert sorted(alerts_of(events)) == sorted(a["alert_id"] for a in first)
        last_id = [e for e in events if e["event"] == "alert"][-1]["id"]
        s.close()                                            # the console drops off ...

        missed = [derived_alert(must_act=["AH"], summary=f"missed {i}") for i in range(20)]
        for a in missed:                                     # ... while these are published
            pub.publish(a)
        time.sleep(0.3)

        again = RawSSE(gw.url, "/alerts/stream", {**bearer(tokens["ah-duty"]), "Last-Event-ID": last_id})
        events = again.read_events(15, until=lambda evs: len(alerts_of(evs)) >= 20)
        assert events[0]["event"] == "hello" and events[0]["json"]["replaying"] is True
        got = alerts_of(events)
        assert sorted(got) == sorted(a["alert_id"] for a in missed)     # all of them, none of the first five
        assert len(got) == len(set(got))
        later = derived_alert(must_act=["AH"], summary="after the replay")
        pub.publish(later)                                   # and then it is live again
        assert alerts_of(again.read_events(10, until=lambda evs: alerts_of(evs))) == [later["alert_id"]]
        again.close()

        # a time instead of a cursor: everything from before the first alert, in one go
        since = (first[0]["emitted_at"] - timedelta(seconds=5)).isoformat()
        r = RawSSE(gw.url, f"/alerts/stream?from_time={since.replace('+', '%2B')}", bearer(tokens["ah-duty"]))
        all_ids = alerts_of(r.read_events(15, until=lambda evs: len(alerts_of(evs)) >= 26))
        assert sorted(all_ids) == sorted(a["alert_id"] for a in first + missed + [later])
        r.close()


def test_a_stalled_subscriber_is_cut_off_with_lagged_while_the_others_keep_up(setup):
    kafka, tokens, prefix, pub = setup
    with RunningGateway(kafka, tokens, prefix, queue_size=64) as gw:
        # The stalled console: a tiny receive window, and it stops reading after the hello.
        stalled = RawSSE(gw.url, "/alerts/stream?region=AH", bearer(tokens["rcc"]), rcvbuf=4096)
        stalled.read_events(10, until=lambda evs: evs)
        healthy = RawSSE(gw.url, "/alerts/stream?region=AH", bearer(tokens["ah-duty"]))
        healthy.read_events(10, until=lambda evs: evs)

        published: list[str] = []
        received: list[str] = []
        padding = "x" * 32000         # big alerts fill the stalled connection's socket buffers sooner
        deadline = time.monotonic() + 60
        while gw.metric("yrdbus_gateway_subscriber_lagged_total", kind="sse") < 1:
            assert time.monotonic() < deadline, "the stalled subscriber was never cut off"
            batch = [derived_alert(must_act=["AH"], details={"pad": padding}) for _ in range(25)]
            pub.publish_many(batch, derived=False)
            published += [a["alert_id"] for a in batch]
            target = len(published)
            received += alerts_of(healthy.read_events(10, until=lambda evs: len(received) + len(alerts_of(evs)) >= target))
        # The healthy subscriber kept up all along: it has every alert, in time, and is still connected.
        assert sorted(received) == sorted(published)
        assert not healthy.closed

        # The stalled one reads again: what it got, then `lagged` with a cursor, then the end of the stream.
        events = stalled.read_events(30, until=lambda evs: any(e["event"] == "lagged" for e in evs))
        assert events and events[-1]["event"] == "lagged"
        cursor = events[-1]["json"]["cursor"]
        assert cursor == events[-1]["id"]
        before = alerts_of(events)
        stalled.read_events(5)
        assert stalled.closed
        # Resuming from the cursor yields the rest: nothing was lost for the slow one either.
        resumed = RawSSE(gw.url, f"/alerts/stream?region=AH&since={cursor}", bearer(tokens["rcc"]))
        rest = alerts_of(resumed.read_events(30, until=lambda evs: len(before) + len(alerts_of(evs)) >= len(published)))
        assert sorted(before + rest) == sorted(published)
        assert gw.metric("yrdbus_gateway_subscriber_lagged_total", kind="sse") == 1
        for s in (stalled, healthy, resumed):
            s.close()


def test_a_console_of_two_regions_gets_an_alert_once_and_the_version_withdrawing_it_once(setup):
    kafka, tokens, prefix, pub = setup
    with RunningGateway(kafka, tokens, prefix) as gw:
        s = RawSSE(gw.url, "/alerts/stream?region=AH&region=SH", bearer(tokens["rcc"]))
        s.read_events(10, until=lambda evs: evs)
        raised = derived_alert(must_act=["AH"], inform=["SH"])          # routed to both of its topics
        gone = withdrawal(raised, "flag resolved before the crossing")
        pub.publish(raised)
        pub.publish(gone)
        # one marker a topic, behind the alert's copies in their partitions: once both are read, every copy was
        markers = {r: derived_alert(must_act=[r], summary=f"marker {r}") for r in ("AH", "SH")}
        for r, m in markers.items():
            pub.publish(m, to=[r], derived=False, key=raised["alert_id"])
        marker_ids = {m["alert_id"] for m in markers.values()}
        events = s.read_events(20, until=lambda evs: marker_ids <= set(alerts_of(evs)))
        assert marker_ids <= set(alerts_of(events))
        got = [(e["json"]["status"], e["json"]["status_reason"]) for e in events
               if e["event"] == "alert" and e["json"]["alert_id"] == raised["alert_id"]]
        assert got == [("RAISED", None), ("WITHDRAWN", "flag resolved before the crossing")]
        s.close()


def test_websocket_stream_filters_and_resumes_from_a_cursor(setup):
    kafka, tokens, prefix, pub = setup
    with RunningGateway(kafka, tokens, prefix) as gw:
        base = gw.url.replace("http", "ws") + "/alerts/ws?min_severity=HIGH"
        low, high = derived_alert(severity="LOW"), derived_alert(severity="HIGH")
        with ws_connect(base, additional_headers=bearer(tokens["ah-duty"]), open_timeout=10) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "hello"
            pub.publish(low)
            pub.publish(high)
            msg = json.loads(ws.recv(timeout=10))
            assert msg["type"] == "alert" and msg["data"]["alert_id"] == high["alert_id"]
            assert msg["data"]["evidence"] == high["evidence"] and msg["data"]["routed_to"] == "AH"
            cursor = msg["id"]
        missed = [derived_alert(severity="CRITICAL") for _ in range(3)]
        for a in missed:
            pub.publish(a)
        with ws_connect(f"{base}&since={cursor}", additional_headers=bearer(tokens["ah-duty"]), open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            got = [json.loads(ws.recv(timeout=10))["data"]["alert_id"] for _ in missed]
        assert sorted(got) == sorted(a["alert_id"] for a in missed)
        metrics = httpx2.get(gw.url + "/metrics", timeout=5).text
        assert 'yrdbus_gateway_alerts_delivered_total{kind="ws"} 4.0' in metrics
        assert 'yrdbus_gateway_delivery_delay_seconds_count{kind="ws"} 4.0' in metrics
        deadline = time.monotonic() + 10     # the server notices the closed sockets on its own time
        while gw.metric("yrdbus_gateway_subscribers", kind="ws") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.metric("yrdbus_gateway_subscribers", kind="ws") == 0


def test_yrdbus_gateway_and_alerts_tail_from_the_command_line(setup, tmp_path):
    kafka, tokens, prefix, pub = setup
    port = free_port()
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap, "YRDBUS_GATEWAY_PORT": str(port),
           "YRDBUS_GATEWAY_TOKENS_FILE": str(tokens.path)}
    env.pop("YRDBUS_GATEWAY_TOKEN", None)
    server = subprocess.Popen([YRDBUS, "gateway", "--prefix", prefix, "--log-level", "warning"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "yrdbus gateway did not become ready"
            time.sleep(0.2)

        token_file = tmp_path / "ah.token"
        token_file.write_text(tokens["ah-duty"] + "\n")
        # --json, with the token in a file
        tail = subprocess.Popen([YRDBUS, "alerts", "tail", "--json", "--count", "3", "--region", "AH",
                                 "--token-file", str(token_file)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # lines, with the token in the environment
        lines = subprocess.Popen([YRDBUS, "alerts", "tail", "--count", "2", "--min-severity", "CRITICAL"],
                                 env={**env, "YRDBUS_GATEWAY_TOKEN": tokens["ah-duty"]}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        # the same in English (YRDBUS_LANG, or --lang en)
        lines_en = subprocess.Popen([YRDBUS, "alerts", "tail", "--count", "2", "--min-severity", "CRITICAL"],
                                    env={**env, "YRDBUS_GATEWAY_TOKEN": tokens["ah-duty"], "YRDBUS_LANG": "en"},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # all are subscribed once the gateway counts them
        while httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.count(
                'yrdbus_gateway_subscribers{kind="sse"} 3.0') == 0:
            assert time.monotonic() < deadline + 30, "the tails never connected"
            time.sleep(0.1)
        alerts = [derived_alert(severity="HIGH"), derived_alert(severity="CRITICAL", summary="Forged passport ring")]
        alerts.append(withdrawal(alerts[1], "the passport was reported stolen after the crossing"))
        for a in alerts:
            pub.publish(a)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        printed = [(p["alert_id"], p["status"], p["status_reason"]) for p in map(json.loads, out.splitlines())]
        # the two alerts' partitions are read side by side: an alert's versions in order (one key, one
        # partition), the two alerts in either
        assert [p for p in printed if p[0] == alerts[1]["alert_id"]] == [
            (alerts[1]["alert_id"], "RAISED", None),
            (alerts[1]["alert_id"], "WITHDRAWN", "the passport was reported stolen after the crossing")]
        assert [p for p in printed if p[0] != alerts[1]["alert_id"]] == [(alerts[0]["alert_id"], "RAISED", None)]
        # officers' lines: Simplified Chinese by default, Beijing time with the date
        out, err = lines.communicate(timeout=30)
        assert lines.returncode == 0, err
        first, second = out.splitlines()
        beijing = (alerts[1]["occurred_at"] + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")
        assert first.startswith(beijing) and "严重 有效" in first and "安徽" in first and "跨地区命中" in first
        assert "Forged passport ring" in first and alerts[1]["alert_id"] in first and "已撤销" not in first
        assert "已撤销: the passport was reported stolen after the crossing" in second and alerts[1]["alert_id"] in second
        out, err = lines_en.communicate(timeout=30)
        assert lines_en.returncode == 0, err
        first, second = out.splitlines()
        assert first.startswith(beijing) and "CRITICAL RAISED Anhui CROSS_REGION_HIT" in first
        assert "WITHDRAWN: the passport was reported stolen after the crossing" in second

        refused = subprocess.run([YRDBUS, "alerts", "tail", "--region", "ZJ", "--token-file", str(token_file)],
                                 env=env, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2 and "403" in refused.stderr and "ZJ" in refused.stderr
        no_token = subprocess.run([YRDBUS, "alerts", "tail"], env=env, capture_output=True, text=True, timeout=30)
        assert no_token.returncode == 2 and "YRDBUS_GATEWAY_TOKEN" in no_token.stderr
    finally:
        server.terminate()
        server.wait(20)
