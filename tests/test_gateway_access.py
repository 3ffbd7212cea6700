"""The gateway's access control on the real broker: tokens, scopes, 401 and 403, and what each subscriber receives."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from connectors.gateway.access import AccessControl, AccessFile, AccessFileError, Unauthorized, hash_token, verify_token

from gateway_harness import (STANDARD_SCOPES, Publisher, RawSSE, RunningGateway, alerts_of, derived_alert,
                             write_access_file)

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


@pytest.fixture
def gw(kafka, unique, tmp_path):
    tokens = write_access_file(tmp_path, STANDARD_SCOPES)
    prefix = f"{unique}."
    with RunningGateway(kafka, tokens, prefix, ticket_ttl_s=1.0) as running:
        running.tokens = tokens
        running.publisher = Publisher(kafka, prefix)
        running.prefix = prefix
        yield running
        running.publisher.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_stream(gw, token: str, query: str = "") -> RawSSE:
    stream = RawSSE(gw.url, "/alerts/stream" + (f"?{query}" if query else ""), bearer(token))
    hello = stream.read_events(10, until=lambda evs: any(e["event"] == "hello" for e in evs))
    assert stream.status == 200 and hello and hello[0]["event"] == "hello", (stream.status, stream.buffer[:300])
    stream.hello = hello[0]["json"]
    return stream


# --------------------------------------------------------------------------- 401
def test_missing_malformed_or_wrong_tokens_get_401_with_a_bearer_challenge(gw):
    good = gw.tokens["ah-duty"]
    tid, secret = good.split(".", 1)
    cases = {
        "no token": {},
        "not bearer": {"Authorization": f"Basic {good}"},
        "wrong secret": bearer(f"{tid}.{secret[::-1]}"),
        "unknown id": bearer(f"nobody.{secret}"),
        "no id": bearer(secret),
    }
    for label, headers in cases.items():
        r = httpx2.get(gw.url + "/alerts/stream?region=AH", headers=headers, timeout=10)
        assert r.status_code == 401, label
        assert r.headers["www-authenticate"].startswith("Bearer"), label
        body = r.json()
        assert body["error"] == "unauthorized" and body["message"], label
    r = httpx2.get(gw.url + f"/alerts/stream?token={good}", timeout=10)
    assert r.status_code == 401 and "never accepted in a URL" in r.json()["message"]
    assert httpx2.post(gw.url + "/auth/ticket", headers=bearer(f"{tid}.x"), timeout=10).status_code == 401
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(gw.url.replace("http", "ws") + "/alerts/ws", additional_headers=bearer(f"{tid}.x"),
                   open_timeout=10)
    assert denied.value.response.status_code == 401


def test_a_ticket_opens_a_browser_stream_and_a_forged_or_expired_one_does_not(gw):
    r = httpx2.post(gw.url + "/auth/ticket", headers=bearer(gw.tokens["ah-duty"]), timeout=10)
    assert r.status_code == 200
    ticket = r.json()["ticket"]
    assert r.json()["regions"] == ["AH"]
    stream = RawSSE(gw.url, f"/alerts/stream?ticket={ticket}")
    assert stream.read_events(10, until=lambda evs: evs)[0]["event"] == "hello"
    stream.close()
    body, sig = ticket.split(".")
    forged = httpx2.get(gw.url + f"/alerts/stream?ticket={body}.{sig[:-2]}xx", timeout=10)
    assert forged.status_code == 401
    time.sleep(1.2)   # the fixture's tickets live one second
    expired = httpx2.get(gw.url + f"/alerts/stream?ticket={ticket}", timeout=10)
    assert expired.status_code == 401 and "expired" in expired.json()["message"]


# --------------------------------------------------------------------------- 403
def test_a_token_for_ah_asking_for_zj_gets_403_naming_the_region_and_the_scope(gw):
    r = httpx2.get(gw.url + "/alerts/stream?region=ZJ", headers=bearer(gw.tokens["ah-duty"]), timeout=10)
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "forbidden" and body["region"] == "ZJ" and body["scope"] == {"regions": ["AH"]}
    assert "ZJ" in body["message"] and "AH" in body["message"] and "ah-duty" in body["message"]
    # the same over WebSocket, and for a station of another region, and for a region list that sneaks ZJ in
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(gw.url.replace("http", "ws") + "/alerts/ws?region=ZJ", additional_headers=bearer(gw.tokens["ah-duty"]),
                   open_timeout=10)
    assert denied.value.response.status_code == 403
    r = httpx2.get(gw.url + "/alerts/stream?station=ZJ-NGB", headers=bearer(gw.tokens["ah-duty"]), timeout=10)
    assert r.status_code == 403 and r.json()["station"] == "ZJ-NGB"
    r = httpx2.get(gw.url + "/alerts/stream?region=AH,ZJ", headers=bearer(gw.tokens["ah-duty"]), timeout=10)
    assert r.status_code == 403 and r.json()["region"] == "ZJ"
    # a station token may read its own region's topic, never another station of it
    r = httpx2.get(gw.url + "/alerts/stream?station=SH-SHA", headers=bearer(gw.tokens["pvg"]), timeout=10)
    assert r.status_code == 403
    r = httpx2.get(gw.url + "/alerts/stream?region=XX", headers=bearer(gw.tokens["rcc"]), timeout=10)
    assert r.status_code == 400 and "region" in r.json()["message"]


# --------------------------------------------------------------------------- what each one receives
def test_an_ah_subscriber_never_receives_an_alert_that_was_not_routed_to_ah(gw):
    ah = open_stream(gw, gw.tokens["ah-duty"])
    zj = open_stream(gw, gw.tokens["zj-duty"])
    rcc = open_stream(gw, gw.tokens["rcc"])
    assert ah.hello["selection"]["topics"] == [f"{gw.prefix}alerts.to.AH"]
    assert rcc.hello["selection"]["topics"] == [f"{gw.prefix}alerts.derived"]

    zj_only = derived_alert(must_act=["ZJ"], severity="CRITICAL", summary="ZJ only")
    # Names AH in its body but was routed to ZJ alone: routing, not the body, decides who receives it.
    misrouted = derived_alert(must_act=["ZJ"], inform=["AH"], summary="routed to ZJ only")
    for_ah = derived_alert(must_act=["AH"], inform=["ZJ"], summary="for AH, ZJ informed")
    gw.publisher.publish(zj_only)
    gw.publisher.publish(misrouted, to=["ZJ"])
    gw.publisher.publish(for_ah)

    got_zj = alerts_of(zj.read_events(10, until=lambda evs: len(alerts_of(evs)) >= 3))
    got_rcc = alerts_of(rcc.read_events(10, until=lambda evs: len(alerts_of(evs)) >= 3))
    got_ah = alerts_of(ah.read_events(10, until=lambda evs: for_ah["alert_id"] in alerts_of(evs)))
    got_ah += alerts_of(ah.read_events(1.0))   # anything else that might still arrive
    assert sorted(got_zj) == sorted([zj_only["alert_id"], misrouted["alert_id"], for_ah["alert_id"]])
    assert sorted(got_rcc) == sorted([zj_only["alert_id"], misrouted["alert_id"], for_ah["alert_id"]])
    assert got_ah == [for_ah["alert_id"]]
    for s in (ah, zj, rcc):
        s.close()


def test_a_station_token_receives_its_own_stations_alerts_only(gw):
    pvg = open_stream(gw, gw.tokens["pvg"])
    assert pvg.hello["selection"]["topics"] == [f"{gw.prefix}alerts.to.SH"]
    at_pvg = derived_alert(must_act=["SH"], station_id="SH-PVG")
    at_pvg_port = derived_alert(must_act=["SH"], port_code="PVG")
    at_sha = derived_alert(must_act=["SH"], station_id="SH-SHA", port_code="SHA")
    region_wide = derived_alert(must_act=["SH"])
    for a in (at_sha, region_wide, at_pvg, at_pvg_port):
        gw.publisher.publish(a)
    got = alerts_of(pvg.read_events(10, until=lambda evs: len(alerts_of(evs)) >= 2))
    got += alerts_of(pvg.read_events(1.0))
    assert sorted(got) == sorted([at_pvg["alert_id"], at_pvg_port["alert_id"]])
    pvg.close()


def test_filters_by_min_severity_and_kind_apply_within_the_scope(gw):
    s = open_stream(gw, gw.tokens["rcc"], "region=AH&min_severity=HIGH&kind=CROSS_REGION_HIT,TRANSIT_OVERSTAY")
    low = derived_alert(severity="LOW")
    other_kind = derived_alert(severity="CRITICAL", kind="TREND_RISING")
    wanted = [derived_alert(severity="HIGH"), derived_alert(severity="CRITICAL", kind="TRANSIT_OVERSTAY")]
    for a in [low, other_kind] + wanted:
        gw.publisher.publish(a)
    got = alerts_of(s.read_events(10, until=lambda evs: len(alerts_of(evs)) >= 2))
    got += alerts_of(s.read_events(0.5))
    # two keys, two partitions of alerts.to.AH: the stream keeps each partition's order, not one across them
    assert sorted(got) == sorted(a["alert_id"] for a in wanted)
    r = httpx2.get(gw.url + "/alerts/stream?min_severity=URGENT", headers=bearer(gw.tokens["rcc"]), timeout=10)
    assert r.status_code == 400 and "min_severity" in r.json()["message"]
    s.close()


# --------------------------------------------------------------------------- the access file and hash-token
def test_tokens_are_stored_as_salted_scrypt_hashes_and_clear_tokens_are_refused(tmp_path):
    a, b = hash_token("ah-duty.secret", n=2**10), hash_token("ah-duty.secret", n=2**10)
    assert a != b and a.startswith("scrypt$") and "secret" not in a      # salted
    assert verify_token("ah-duty.secret", a) and not verify_token("ah-duty.secreT", a)
    clear = tmp_path / "clear.toml"
    clear.write_text('[[tokens]]\nid = "ah"\nhash = "ah.plaintext"\nregions = ["AH"]\n')
    with pytest.raises(AccessFileError, match=r"tokens\[0\] \(id 'ah'\), field `hash`"):
        AccessFile.load(clear)
    bad_scope = tmp_path / "scope.toml"
    bad_scope.write_text(f'[[tokens]]\nid = "x"\nhash = "{a}"\nregions = ["ANHUI"]\n')
    with pytest.raises(AccessFileError, match="field `regions`: 'ANHUI' is not a region"):
        AccessFile.load(bad_scope)


def test_hash_token_command_makes_an_entry_the_gateway_accepts(tmp_path):
    out = subprocess.run([YRDBUS, "gateway", "hash-token", "--id", "js-duty", "--regions", "JS", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["token"].startswith("js-duty.") and made["token"] not in made["toml"]
    path = tmp_path / "gateway.toml"
    path.write_text(made["toml"])
    access = AccessControl(path)
    entry = access.authenticate(made["token"])
    assert entry.id == "js-duty" and entry.scope.readable_regions() == ["JS"]
    with pytest.raises(Unauthorized):
        access.authenticate(made["token"] + "x")
    # an existing token from standard input
    again = subprocess.run([YRDBUS, "gateway", "hash-token", "--stdin", "--all"], input=made["token"] + "\n",
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "all = true" in again.stdout and made["token"] not in again.stdout
