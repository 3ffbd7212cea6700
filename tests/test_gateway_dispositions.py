"""Officers' dispositions of derived alerts through the gateway, on the real broker: who may acknowledge and
settle what, once; what goes on the bus; what a gateway started later knows; the command line."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest

from schemas import topics

from gateway_harness import (Publisher, RawSSE, RunningGateway, derived_alert, records_on, withdrawal,
                             write_access_file)

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
SCOPES = {"js-duty": {"regions": ["JS"]}, "sh-duty": {"regions": ["SH"]}, "ah-duty": {"regions": ["AH"]},
          "rcc": {"all": True}, "pvg": {"stations": ["SH-PVG"]}}


@pytest.fixture
def gw(kafka, unique, tmp_path):
    tokens = write_access_file(tmp_path, SCOPES)
    prefix = f"{unique}."
    with RunningGateway(kafka, tokens, prefix) as running:
        running.tokens = tokens
        running.prefix = prefix
        running.publisher = Publisher(kafka, prefix)
        yield running
        running.publisher.close()


def post(gw, token: str, alert_id: str, body) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {gw.tokens[token]}"} if token else {}
    return httpx2.post(f"{gw.url}/alerts/{alert_id}/dispositions", json=body, headers=headers, timeout=30)


def on_the_bus(kafka, prefix: str) -> list[tuple[bytes, dict]]:
    """Every record of the dispositions topic: (raw value, decoded)."""
    return records_on(kafka.bootstrap, prefix + topics.DISPOSITIONS, "disposition")


def test_a_region_acknowledges_and_settles_its_alert_once_and_the_bus_holds_each_step_once(gw, kafka):
    alert = derived_alert(must_act=("JS",), inform=("SH",), severity="CRITICAL")
    gw.publisher.publish(alert)
    aid = alert["alert_id"]

    first = post(gw, "js-duty", aid, {"outcome": "ACKNOWLEDGED"})
    assert first.status_code == 201, first.text
    (ack,) = first.json()["dispositions"]
    assert (ack["outcome"], ack["region"], ack["officer"], ack["must_act"], ack["inform"]) == (
        "ACKNOWLEDGED", "JS", "js-duty", ["JS"], ["SH"])
    again = post(gw, "js-duty", aid, {"outcome": "acknowledged"})
    assert again.status_code == 200 and again.json()["dispositions"] == [ack] and not again.json()["recorded"]

    confirmed = post(gw, "js-duty", aid, {"outcome": "CONFIRMED", "note": "forged visa, held at NKG"})
    assert confirmed.status_code == 201, confirmed.text
    assert [d["outcome"] for d in confirmed.json()["dispositions"]] == ["ACKNOWLEDGED", "CONFIRMED"]
    assert confirmed.json()["dispositions"][1]["note"] == "forged visa, held at NKG"
    assert post(gw, "js-duty", aid, {"outcome": "CONFIRMED"}).status_code == 200
    changed = post(gw, "js-duty", aid, {"outcome": "FALSE_ALARM"})
    assert changed.status_code == 409 and "settled as CONFIRMED by js-duty" in changed.json()["message"]

    # the informed region settles for itself (acknowledging at the same time); the command centre too
    informed = post(gw, "sh-duty", aid, {"outcome": "NO_ACTION"})
    assert informed.status_code == 201
    assert [(d["outcome"], d["region"]) for d in informed.json()["dispositions"]] == [
        ("ACKNOWLEDGED", "SH"), ("NO_ACTION", "SH")]
    centre = post(gw, "rcc", aid, {"outcome": "ACKNOWLEDGED"})
    assert centre.status_code == 201 and centre.json()["dispositions"][0]["region"] is None

    # neither another region nor a station token may
    for token in ("ah-duty", "pvg"):
        refused = post(gw, token, aid, {"outcome": "ACKNOWLEDGED"})
        assert refused.status_code == 403 and f"token '{token}'" in refused.json()["message"], refused.text

    records = on_the_bus(kafka, gw.prefix)
    steps = [(d["region"], d["outcome"]) for _, d in records]
    assert sorted(steps, key=str) == sorted([("JS", "ACKNOWLEDGED"), ("JS", "CONFIRMED"), ("SH", "ACKNOWLEDGED"),
                                             ("SH", "NO_ACTION"), (None, "ACKNOWLEDGED")], key=str)
    assert len({d["disposition_id"] for _, d in records}) == len(records)
    assert all(d["alert_id"] == aid for _, d in records)
    secrets = [gw.tokens[t].split(".", 1)[1].encode() for t in SCOPES]
    assert not any(s in raw for raw, _ in records for s in secrets)   # the officer is the token's name


def open_stream(gw, token: str, query: str = "") -> RawSSE:
    stream = RawSSE(gw.url, "/alerts/stream" + (f"?{query}" if query else ""),
                    {"Authorization": f"Bearer {gw.tokens[token]}"})
    hello = stream.read_events(15, until=lambda evs: any(e["event"] == "hello" for e in evs))
    assert stream.status == 200 and hello, (stream.status, stream.buffer[:300])
    stream.hello = hello[0]["json"]
    return stream


def test_a_disposition_reaches_the_subscribers_of_the_alerts_regions_and_no_one_else(gw):
    alert = derived_alert(must_act=("JS",), inform=("SH",), severity="HIGH")
    other = derived_alert(must_act=("ZJ",), severity="HIGH")
    # markers: dispositions the AH and the CRITICAL-only subscribers do receive, read after the others
    marker_ah = derived_alert(must_act=("AH",), severity="CRITICAL")
    marker_sh = derived_alert(must_act=("SH",), severity="CRITICAL")
    js, sh, ah, rcc = (open_stream(gw, t) for t in ("js-duty", "sh-duty", "ah-duty", "rcc"))
    critical_only = open_stream(gw, "sh-duty", "min_severity=CRITICAL")
    assert sh.hello["selection"]["dispositions"] and sh.hello["selection"]["topics"] == [f"{gw.prefix}alerts.to.SH"]
    gw.publisher.publish_many([alert, other, marker_ah, marker_sh])
    assert post(gw, "js-duty", alert["alert_id"], {"outcome": "CONFIRMED", "note": "held"}).status_code == 201
    assert post(gw, "rcc", other["alert_id"], {"outcome": "FALSE_ALARM"}).status_code == 201

    def dispositions(stream, n):
        events = stream.read_events(30, until=lambda evs: sum(e["event"] == "disposition" for e in evs) >= n)
        return [(e["json"]["alert_id"], e["json"]["outcome"], e["json"]["region"]) for e in events
                if e["event"] == "disposition"]

    mine = [(alert["alert_id"], "ACKNOWLEDGED", "JS"), (alert["alert_id"], "CONFIRMED", "JS")]
    assert dispositions(js, 2) == mine
    assert dispositions(sh, 2) == mine                       # informed of the alert: sees what JS said
    assert sorted(dispositions(rcc, 4), key=str) == sorted(mine + [(other["alert_id"], "ACKNOWLEDGED", None),
                                                                   (other["alert_id"], "FALSE_ALARM", None)], key=str)
    # the gateway has handed those out; now the markers: AH and the CRITICAL-only subscriber get theirs and
    # nothing before (not the JS alert's, not a HIGH alert's)
    assert post(gw, "ah-duty", marker_ah["alert_id"], {"outcome": "ACKNOWLEDGED"}).status_code == 201
    assert post(gw, "sh-duty", marker_sh["alert_id"], {"outcome": "ACKNOWLEDGED"}).status_code == 201
    assert dispositions(ah, 1) == [(marker_ah["alert_id"], "ACKNOWLEDGED", "AH")]
    assert dispositions(critical_only, 1) == [(marker_sh["alert_id"], "ACKNOWLEDGED", "SH")]

    # a subscriber resuming from its first cursor replays the alerts and dispositions it missed, once each
    late = RawSSE(gw.url, "/alerts/stream", {"Authorization": f"Bearer {gw.tokens['sh-duty']}",
                                             "Last-Event-ID": sh.hello["cursor"]})
    replayed = late.read_events(30, until=lambda evs: sum(e["event"] == "disposition" for e in evs) >= 3
                                and sum(e["event"] == "alert" for e in evs) >= 2)
    assert sorted((e["json"]["alert_id"], e["json"]["outcome"]) for e in replayed if e["event"] == "disposition") \
        == sorted([(alert["alert_id"], "ACKNOWLEDGED"), (alert["alert_id"], "CONFIRMED"),
                   (marker_sh["alert_id"], "ACKNOWLEDGED")])
    assert sorted(e["json"]["alert_id"] for e in replayed if e["event"] == "alert") == sorted(
        [alert["alert_id"], marker_sh["alert_id"]])


def test_requests_that_break_a_rule_are_refused_with_the_rule_named(gw):
    alert = derived_alert(must_act=("AH",), severity="HIGH")
    gw.publisher.publish(alert)
    aid = alert["alert_id"]
    cases = [
        ("ah-duty", "no-such-alert", {"outcome": "ACKNOWLEDGED"}, 404, "no derived alert has this id"),
        ("ah-duty", aid, {"outcome": "SEEN"}, 400, "field `outcome`: expected one of ACKNOWLEDGED"),
        ("ah-duty", aid, {}, 400, "field `outcome`"),
        ("ah-duty", aid, {"outcome": "CONFIRMED", "note": "x" * 501}, 400, "field `note`: at most 500"),
        ("ah-duty", aid, {"outcome": "CONFIRMED", "note": "a\x1bb"}, 400, "control characters"),
        ("ah-duty", aid, {"outcome": "CONFIRMED", "officer": "someone-else"}, 400, "unknown field(s) officer"),
        ("ah-duty", aid, ["CONFIRMED"], 400, "JSON object"),
        (None, aid, {"outcome": "CONFIRMED"}, 401, ""),
    ]
    for token, alert_id, body, status, text in cases:
        r = post(gw, token, alert_id, body)
        assert r.status_code == status and text in r.text, (body, r.status_code, r.text)

    # a withdrawn alert can be acknowledged, not settled (each request is decided on what was published before it)
    gw.publisher.publish(withdrawal(alert, "disproved by events read later"))
    r = post(gw, "ah-duty", aid, {"outcome": "CONFIRMED"})
    assert r.status_code == 409 and "was withdrawn" in r.json()["message"], r.text
    assert post(gw, "ah-duty", aid, {"outcome": "ACKNOWLEDGED"}).status_code == 201


def test_a_gateway_started_later_knows_the_dispositions_recorded_before(kafka, unique, tmp_path):
    tokens = write_access_file(tmp_path, SCOPES)
    prefix = f"{unique}."
    publisher = Publisher(kafka, prefix)
    alert = derived_alert(must_act=("ZJ", "JS"))
    publisher.publish(alert)
    publisher.close()
    with RunningGateway(kafka, tokens, prefix) as first:
        first.tokens = tokens
        assert post(first, "js-duty", alert["alert_id"], {"outcome": "FALSE_ALARM"}).status_code == 201
    with RunningGateway(kafka, tokens, prefix) as second:
        second.tokens = tokens
        r = post(second, "js-duty", alert["alert_id"], {"outcome": "CONFIRMED"})
        assert r.status_code == 409 and "FALSE_ALARM" in r.json()["message"]
        assert post(second, "js-duty", alert["alert_id"], {"outcome": "FALSE_ALARM"}).status_code == 200


def test_the_command_line_acknowledges_and_settles(gw, tmp_path):
    alert = derived_alert(must_act=("SH",))
    gw.publisher.publish(alert)
    token_file = tmp_path / "token"
    token_file.write_text(gw.tokens["sh-duty"])
    base = [YRDBUS, "alerts"]
    common = ["--url", gw.url, "--token-file", str(token_file)]
    ack = subprocess.run(base + ["ack", alert["alert_id"], *common], capture_output=True, text=True, timeout=60)
    assert ack.returncode == 0 and f"{alert['alert_id']}: ACKNOWLEDGED for SH by sh-duty" in ack.stdout, ack.stderr
    settle = subprocess.run(base + ["settle", alert["alert_id"], "--outcome", "no-action", "--note", "vessel left",
                                    "--json", *common], capture_output=True, text=True, timeout=60)
    assert settle.returncode == 0, settle.stderr
    body = json.loads(settle.stdout)
    assert body["recorded"] and body["dispositions"][-1]["outcome"] == "NO_ACTION"
    bad = subprocess.run(base + ["settle", "nope", "--outcome", "confirmed", *common], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "404" in bad.stderr and "no derived alert has this id" in bad.stderr

    # `alerts tail` shows the dispositions of the alerts in its scope, after the alert
    since = (alert["emitted_at"] - timedelta(minutes=1)).isoformat()
    tail = subprocess.Popen(base + ["tail", "--json", "--from-time", since, *common], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in tail.stdout], daemon=True).start()
    got = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (sum("event" in g for g in got) >= 2
                                                    and any("event" not in g for g in got)):
            try:
                got.append(json.loads(lines.get(timeout=1.0)))
            except queue.Empty:
                pass
    finally:
        tail.terminate()
        tail.wait(10)
    # the alert (an object as before) and its two dispositions; a replay reads the alert and disposition topics
    # side by side, so their order between each other is not fixed
    assert [g["alert_id"] for g in got if "event" not in g] == [alert["alert_id"]]
    assert [(g["event"], g["outcome"], g["officer"]) for g in got if "event" in g] == [
        ("disposition", "ACKNOWLEDGED", "sh-duty"), ("disposition", "NO_ACTION", "sh-duty")]
