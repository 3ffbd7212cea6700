"""Heightened mode declared from the command centre's console, on the real broker: only a command-centre
token may; the control event goes on the bus as the simulator's does, and the stream layer's rules broadcast a
HIGH alert of the region inside the window."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx2
import pytest

from kit.scripted import Script, token
from schemas import topics
from streams import ruleset
from streams.events import plain
from streams.regional import RegionalRules

from gateway_harness import Publisher, RunningGateway, records_on, write_access_file

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
SCOPES = {"rcc": {"all": True}, "sh-duty": {"regions": ["SH"]}, "pvg": {"stations": ["SH-PVG"]}}


@pytest.fixture
def gw(kafka, unique, tmp_path):
    tokens = write_access_file(tmp_path, SCOPES)
    with RunningGateway(kafka, tokens, f"{unique}.") as running:
        running.tokens = tokens
        running.prefix = f"{unique}."
        running.publisher = Publisher(kafka, running.prefix)
        yield running
        running.publisher.close()


def declare(gw, token: str | None, body) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {gw.tokens[token]}"} if token else {}
    return httpx2.post(f"{gw.url}/control/heightened", json=body, headers=headers, timeout=30)


def control_events(kafka, prefix: str) -> list[dict]:
    return [event for _, event in records_on(kafka.bootstrap, prefix + topics.CONTROL, "control")]


def test_the_command_centre_declares_heightened_mode_and_the_rules_broadcast_inside_its_window(gw, kafka):
    now = datetime.now(timezone.utc)
    body = {"regions": ["sh"], "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(days=5)).astimezone(timezone(timedelta(hours=8))).isoformat(),
            "threshold_multiplier": 0.5, "reason": "China International Import Expo"}
    r = declare(gw, "rcc", body)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["regions"] == ["SH"] and answer["issued_by"] == "rcc" and answer["kind"] == "HEIGHTENED_MODE"

    (event,) = control_events(kafka, gw.prefix)
    assert event["event_id"] == answer["event_id"] and event["regions"] == ["SH"]
    assert event["threshold_multiplier"] == 0.5 and event["issued_by"] == "rcc"
    assert event["ends_at"] - event["starts_at"] == timedelta(days=5, hours=1)

    # the stream layer's regional rules, fed the console's event and station alerts: the window announces
    # itself to every region, a HIGH alert of SH inside it is broadcast, one of JS is not
    rules = RegionalRules(ruleset.default())
    state = rules.new_state()
    at = int((now - timedelta(minutes=30)).timestamp() * 1000)
    s = Script()
    inside = s.alert("PVG", at, "SMUGGLING", "HIGH", subject=token(1), source="OFFICER")
    s.alert("NKG", at, "SMUGGLING", "HIGH", subject=token(2), source="OFFICER")
    outs = rules.on_event(state, plain("control", event))
    for kind, _, _, rec in s.events:
        outs += rules.on_event(state, plain(kind, rec))
    alerts = [(a["kind"], a["must_act"], a["inform"]) for k, a in outs if k == "derived_alert"]
    assert alerts == [("HEIGHTENED_MODE", ["SH"], ["JS", "ZJ", "AH"]), ("BROADCAST", ["JS", "ZJ", "AH"], ["SH"])]
    assert [a["evidence"] for k, a in outs if k == "derived_alert"][1] == [inside["event_id"]]


def test_only_a_command_centre_token_declares_and_a_malformed_window_is_refused_by_field(gw, kafka):
    now = datetime.now(timezone.utc)
    later = (now + timedelta(days=1)).isoformat()
    for tok in ("sh-duty", "pvg"):
        r = declare(gw, tok, {"regions": ["SH"], "ends_at": later})
        assert r.status_code == 403 and "only a command-centre token" in r.json()["message"], r.text
    assert declare(gw, None, {"regions": ["SH"], "ends_at": later}).status_code == 401
    cases = [
        ({"regions": ["SH"]}, "field `ends_at`: required"),
        ({"regions": ["XX"], "ends_at": later}, "field `regions`: XX not a region"),
        ({"regions": [], "ends_at": later}, "field `regions`"),
        ({"regions": ["SH"], "ends_at": "2026-11-10T00:00:00"}, "has no time zone"),
        ({"regions": ["SH"], "ends_at": (now - timedelta(hours=1)).isoformat(),
          "starts_at": (now - timedelta(hours=2)).isoformat()}, "already past"),
        ({"regions": ["SH"], "starts_at": later, "ends_at": now.isoformat()}, "is not after starts_at"),
        ({"regions": ["SH"], "ends_at": (now + timedelta(days=40)).isoformat()}, "at most 31 days"),
        ({"regions": ["SH"], "ends_at": later, "threshold_multiplier": 2}, "field `threshold_multiplier`"),
        ({"regions": ["SH"], "ends_at": later, "threshold_multiplier": 0}, "field `threshold_multiplier`"),
        ({"regions": ["SH"], "ends_at": later, "reason": "x" * 201}, "field `reason`"),
        ({"regions": ["SH"], "ends_at": later, "issued_by": "someone"}, "unknown field(s) issued_by"),
        (["SH"], "JSON object"),
    ]
    for body, text in cases:
        r = declare(gw, "rcc", body)
        assert r.status_code == 400 and text in r.json()["message"], (body, r.text)
    assert control_events(kafka, gw.prefix) == []         # nothing refused went on the bus


def test_the_command_line_declares_heightened_mode(gw, kafka, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(gw.tokens["rcc"])
    until = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    run = subprocess.run([YRDBUS, "control", "heightened", "--regions", "SH,ZJ", "--until", until, "--multiplier",
                          "0.6", "--reason", "Expo", "--json", "--url", gw.url, "--token-file", str(token_file)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["regions"] == ["SH", "ZJ"] and answer["threshold_multiplier"] == 0.6
    assert [e["event_id"] for e in control_events(kafka, gw.prefix)] == [answer["event_id"]]
    token_file.write_text(gw.tokens["sh-duty"])
    refused = subprocess.run([YRDBUS, "control", "heightened", "--regions", "SH", "--until", until, "--url", gw.url,
                              "--token-file", str(token_file)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "403" in refused.stderr


def end(gw, token: str | None, window: str, body=None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {gw.tokens[token]}"} if token else {}
    return httpx2.post(f"{gw.url}/control/heightened/{window}/end", json=body or {}, headers=headers, timeout=30)


def announce(gw, rules, state, event) -> list[dict]:
    """The regional rules read a control event; their derived alerts go on the bus as the worker sends them."""
    alerts = [a for k, a in rules.on_event(state, plain("control", event)) if k == "derived_alert"]
    for a in alerts:
        gw.publisher.publish({**a, "emitted_at": int(datetime.now(timezone.utc).timestamp() * 1000)})
    return alerts


def test_the_command_centre_ends_a_window_early_and_the_rules_withdraw_what_it_no_longer_covers(gw, kafka):
    now = datetime.now(timezone.utc)
    r = declare(gw, "rcc", {"regions": ["SH"], "starts_at": (now - timedelta(hours=2)).isoformat(),
                            "ends_at": (now + timedelta(days=3)).isoformat(), "threshold_multiplier": 0.5})
    assert r.status_code == 201, r.text
    (declared,) = control_events(kafka, gw.prefix)
    rules = RegionalRules(ruleset.default())
    state = rules.new_state()
    (announcement,) = announce(gw, rules, state, declared)
    # a HIGH alert of SH an hour ago (inside the window, before its new end) and one a minute from now (after)
    s = Script()
    hour_ago = s.alert("PVG", int((now - timedelta(hours=1)).timestamp() * 1000), "SMUGGLING", "HIGH",
                       subject=token(1), source="OFFICER")
    soon = s.alert("PVG", int((now + timedelta(minutes=10)).timestamp() * 1000), "SMUGGLING", "HIGH",
                   subject=token(2), source="OFFICER")
    broadcasts = [a for kind, _, _, rec in s.events for k, a in rules.on_event(state, plain(kind, rec))
                  if k == "derived_alert"]
    assert [a["evidence"] for a in broadcasts] == [[hour_ago["event_id"]], [soon["event_id"]]]

    # only the command centre ends it; an unknown window is named; a new end after the window's is refused
    assert end(gw, "sh-duty", announcement["alert_id"]).status_code == 403
    assert end(gw, None, announcement["alert_id"]).status_code == 401
    missing = end(gw, "rcc", "0" * 8 + "-0000-4000-8000-" + "0" * 12)
    assert missing.status_code == 404 and "no heightened window" in missing.json()["message"], missing.text
    assert end(gw, "rcc", "../../etc").status_code in (404, 405)
    later = end(gw, "rcc", announcement["alert_id"], {"ends_at": (now + timedelta(days=4)).isoformat()})
    assert later.status_code == 400 and "not before the window's end" in later.json()["message"], later.text
    past = end(gw, "rcc", announcement["alert_id"], {"ends_at": (now - timedelta(hours=1)).isoformat()})
    assert past.status_code == 400 and "is past" in past.json()["message"], past.text
    assert len(control_events(kafka, gw.prefix)) == 1           # nothing refused went on the bus

    # ended now, named by the announcement's id: a version of the same window, regions, start and multiplier kept
    r = end(gw, "rcc", announcement["alert_id"])
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["window_id"] == declared["event_id"] and answer["issued_by"] == "rcc"
    first, ended = control_events(kafka, gw.prefix)
    assert ended["event_id"] == answer["event_id"] and ended["window_id"] == declared["event_id"]
    assert (ended["regions"], ended["starts_at"], ended["threshold_multiplier"]) == (
        declared["regions"], declared["starts_at"], declared["threshold_multiplier"])
    assert abs(ended["ends_at"] - datetime.now(timezone.utc)) < timedelta(minutes=1)

    # the rules: the announcement again with the new end, the broadcast after it withdrawn, the other kept
    outs = announce(gw, rules, state, ended)
    assert [(a["kind"], a["alert_id"], a["status"]) for a in outs] == [
        ("HEIGHTENED_MODE", announcement["alert_id"], "RAISED"),
        ("BROADCAST", broadcasts[1]["alert_id"], "WITHDRAWN")]
    assert outs[0]["details"]["ends_at"] == str(int(ended["ends_at"].timestamp() * 1000))
    # the gateway decides on what the bus holds when asked (the new announcement among it): the window has
    # ended, by either of its names
    for name in (declared["event_id"], announcement["alert_id"]):
        again = end(gw, "rcc", name)
        assert again.status_code == 409 and "already ended" in again.json()["message"], again.text
    assert len(control_events(kafka, gw.prefix)) == 2


def test_the_command_line_ends_a_window(gw, kafka, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(gw.tokens["rcc"])
    until = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    declared = json.loads(subprocess.run(
        [YRDBUS, "control", "heightened", "--regions", "ZJ", "--until", until, "--json", "--url", gw.url,
         "--token-file", str(token_file)], capture_output=True, text=True, timeout=60, check=True).stdout)
    rules = RegionalRules(ruleset.default())
    announce(gw, rules, rules.new_state(), control_events(kafka, gw.prefix)[0])
    wrong = subprocess.run([YRDBUS, "control", "heightened", "--end", declared["event_id"], "--regions", "SH",
                            "--url", gw.url, "--token-file", str(token_file)], capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "--end takes only --until" in wrong.stderr
    run = subprocess.run([YRDBUS, "control", "heightened", "--end", declared["event_id"], "--url", gw.url,
                          "--token-file", str(token_file)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"(window {declared['event_id']}) now ends at" in run.stdout
    assert [e["window_id"] for e in control_events(kafka, gw.prefix)] == [None, declared["event_id"]]
