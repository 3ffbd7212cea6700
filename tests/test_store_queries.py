"""The analysts' query library on the real engine: every named query on a seeded dataset, exact rows."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest

from connectors.store import queries
from connectors.store import Target, migrate
from schemas import reference

S1, S2, S3, S4, S9 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64, "9" * 64)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def naive(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _uuid(n: int) -> str:
    return str(uuid.UUID(int=n))


def clearance(n, subject, when, region, port, direction, basis="VISA", nationality="USA"):
    p = reference.ports()[port]
    assert p.region == region
    return {"event_id": _uuid(n), "region": region, "station_id": p.station_id, "port_code": port,
            "occurred_at": at(when), "published_at": at(when), "subject": subject, "direction": direction,
            "document_type": "PASSPORT", "document_country": nationality, "nationality": nationality,
            "conveyance_type": "FLIGHT", "conveyance_id": "MU1/2017-06-01", "lane": "MANUAL",
            "entry_basis": basis, "decision": "CLEARED"}


def alert(n, subject, when, region, port, status="RAISED", severity="HIGH", published=None):
    p = reference.ports()[port]
    return {"event_id": _uuid(n), "region": region, "station_id": p.station_id, "port_code": port,
            "occurred_at": at(when), "published_at": at(published or when), "subject": subject,
            "kind": "WATCHLIST_HIT", "severity": severity, "source": "WATCHLIST", "status": status,
            "description": ""}


def case(n, case_id, when, region, port, case_type, method, nationalities, stage="OPENED", subjects=()):
    p = reference.ports()[port]
    return {"event_id": _uuid(n), "region": region, "station_id": p.station_id, "port_code": port,
            "occurred_at": at(when), "published_at": at(when), "case_id": case_id, "stage": stage,
            "case_type": case_type, "method": method, "subjects": list(subjects),
            "nationalities": list(nationalities), "persons": len(nationalities), "description": ""}


def derived(alert_id, subject, when, must_act, kind="CROSS_REGION_HIT"):
    return {"alert_id": alert_id, "kind": kind, "severity": "HIGH", "rule_id": "r", "rule_set_version": "1",
            "must_act": must_act, "inform": [], "subject": subject, "evidence": [], "occurred_at": at(when),
            "emitted_at": at(when), "summary": f"{kind} {alert_id}", "details": {}}


def insert(client, db, table, rows):
    columns = sorted({k for r in rows for k in r})
    client.insert(f"{db}.{table}", [[r.get(c) for c in columns] for r in rows], column_names=columns)


@pytest.fixture
def seeded(ch):
    client, db = ch
    migrate(client, Target(database=db))
    insert(client, db, "clearances", [
        clearance(1, S1, "2017-06-01 10:00:00", "SH", "PVG", "ENTRY", basis="TRANSIT_144H"),
        clearance(2, S1, "2017-06-03 12:00:00", "ZJ", "HGH", "EXIT"),
        clearance(3, S2, "2017-06-01 00:00:00", "SH", "SHA", "ENTRY", basis="TRANSIT_144H", nationality="GBR"),
        clearance(4, S3, "2017-06-01 08:00:00", "JS", "NKG", "ENTRY", basis="TRANSIT_144H", nationality="DEU"),
        clearance(5, S3, "2017-06-08 08:00:00", "SH", "PVG", "EXIT", nationality="DEU"),
        clearance(6, S4, "2017-06-04 08:00:00", "JS", "NKG", "ENTRY"),          # before S4 is flagged
        clearance(7, S4, "2017-06-05 12:00:00", "SH", "PVG", "EXIT"),           # flagged region itself
        clearance(8, S4, "2017-06-06 09:00:00", "AH", "HFE", "ENTRY"),
        clearance(9, S4, "2017-06-06 18:00:00", "AH", "HFE", "EXIT"),
    ])
    insert(client, db, "alerts", [
        alert(101, S1, "2017-06-02 09:00:00", "JS", "NKG"),
        alert(102, S4, "2017-06-05 10:00:00", "SH", "PVG"),
        alert(102, S4, "2017-06-05 10:00:00", "SH", "PVG", status="RESOLVED", published="2017-06-05 10:30:00"),
        alert(103, None, "2017-06-06 00:00:00", "SH", "SHA", status="DISMISSED", severity="LOW",
              published="2017-06-06 01:00:00"),
        alert(104, None, "2017-06-07 00:00:00", "SH", "SHA", status="RESOLVED", severity="CRITICAL",
              published="2017-06-07 01:30:00"),
    ])
    cases = [case(201, "AH-2017-000001", "2017-06-04 07:00:00", "AH", "HFE", "STOWAWAY", "STOWAWAY_ON_VESSEL",
                  ["USA", "VNM"], subjects=[S1, S9])]
    n = 300
    # ILLEGAL_STAY/VISA_OVERSTAY/VNM: 4 in the 28-day baseline (expected 1 a week), 6 in the recent week
    for d in ("2017-05-28", "2017-06-05", "2017-06-12", "2017-06-20"):
        n += 1
        cases.append(case(n, f"SH-{n}", f"{d} 03:00:00", "SH", "PVG", "ILLEGAL_STAY", "VISA_OVERSTAY", ["VNM"]))
    for d in ("2017-06-24", "2017-06-25", "2017-06-26", "2017-06-27", "2017-06-29", "2017-06-30"):
        n += 1
        cases.append(case(n, f"SH-{n}", f"{d} 03:00:00", "SH", "PVG", "ILLEGAL_STAY", "VISA_OVERSTAY", ["VNM"]))
    for d in ("2017-06-28", "2017-06-29"):  # later stages of a case are not new cases
        n += 1
        cases.append(case(n, "SH-301", f"{d} 04:00:00", "SH", "PVG", "ILLEGAL_STAY", "VISA_OVERSTAY", ["VNM"],
                          stage="CLOSED"))
    # DOCUMENT_FRAUD/FORGED_DOCUMENT/NGA: 28 in the baseline (7 a week), 8 recent: not significant
    for i in range(28):
        n += 1
        cases.append(case(n, f"JS-{n}", f"{date(2017, 5, 27) + timedelta(days=i)} 05:00:00", "JS", "NKG",
                          "DOCUMENT_FRAUD", "FORGED_DOCUMENT", ["NGA"]))
    for i in range(8):
        n += 1
        cases.append(case(n, f"JS-{n}", f"{date(2017, 6, 24) + timedelta(days=i % 7)} 06:00:00", "JS", "NKG",
                          "DOCUMENT_FRAUD", "FORGED_DOCUMENT", ["NGA"]))
    # ILLEGAL_ENTRY/OTHER/USA: 2 recent, none before: below min_cases
    for d in ("2017-06-29", "2017-06-30"):
        n += 1
        cases.append(case(n, f"ZJ-{n}", f"{d} 07:00:00", "ZJ", "HGH", "ILLEGAL_ENTRY", "OTHER", ["USA"]))
    insert(client, db, "cases", cases)
    insert(client, db, "derived_alerts", [
        derived("d1", S1, "2017-06-03 12:00:01", ["ZJ"]),
        derived("d2", None, "2017-06-05 00:00:00", ["SH", "JS"], kind="DOCUMENT_FRAUD_SPREAD"),
    ])
    previous = client.database
    client.database = db
    yield client, db
    client.database = previous


def rows(client, name, **params):
    return queries.run(client, name, {k: str(v) for k, v in params.items()}).result_rows


def test_library_lists_every_query_with_its_parameters():
    lib = queries.library()
    assert set(lib) == {"subject_history", "cross_region_hits", "rising_case_patterns", "transit_stays",
                        "port_flow_baseline", "alert_handling", "late_events", "rule_feedback", "region_response"}
    assert [p.name for p in lib["subject_history"].params] == ["subject", "since", "until"]
    assert lib["subject_history"].params[0].required
    with pytest.raises(queries.QueryError, match="parameter subject"):
        lib["subject_history"].bind({})
    with pytest.raises(queries.QueryError, match="no parameter 'subjct'"):
        lib["subject_history"].bind({"subjct": "x"})


def test_subject_history_lists_every_kind_of_event_of_the_subject_in_every_region(seeded):
    client, _ = seeded
    got = [(r[0], r[1], r[2], r[3], r[4]) for r in rows(client, "subject_history", subject=S1)]
    assert got == [
        (naive("2017-06-01 10:00:00"), "clearance", "SH", "PVG", "ENTRY"),
        (naive("2017-06-02 09:00:00"), "alert", "JS", "NKG", "WATCHLIST_HIT"),
        (naive("2017-06-03 12:00:00"), "clearance", "ZJ", "HGH", "EXIT"),
        (naive("2017-06-03 12:00:01"), "derived_alert", "ZJ", "", "CROSS_REGION_HIT"),
        (naive("2017-06-04 07:00:00"), "case", "AH", "HFE", "OPENED"),
    ]
    windowed = rows(client, "subject_history", subject=S1, since="2017-06-02 00:00:00", until="2017-06-03 12:00:00")
    assert [r[1] for r in windowed] == ["alert"]


def test_subject_history_lists_a_re_emitted_derived_alert_once_as_last_emitted(seeded):
    client, db = seeded
    again = derived("d1", S1, "2017-06-03 12:00:01", ["ZJ", "SH"])
    again.update(emitted_at=at("2017-06-03 12:05:00"), summary="CROSS_REGION_HIT d1, re-emitted")
    insert(client, db, "derived_alerts", [again])
    got = [r for r in rows(client, "subject_history", subject=S1) if r[1] == "derived_alert"]
    assert [(r[2], r[5], r[6]) for r in got] == [("ZJ,SH", "CROSS_REGION_HIT d1, re-emitted", "d1")]


def test_subject_history_includes_rows_stored_before_its_table_existed(seeded):
    """Migration 0006 copies what the four event tables held before its views existed (-- backfill)."""
    client, db = seeded
    before = rows(client, "subject_history", subject=S1)
    client.command(f"TRUNCATE TABLE {db}.subject_events")
    client.command(f"ALTER TABLE {db}.schema_migrations DELETE WHERE version = 6", settings={"mutations_sync": 2})
    assert rows(client, "subject_history", subject=S1) == []
    assert migrate(client, Target(database=db)).applied == ["0006_subject_events"]
    assert rows(client, "subject_history", subject=S1) == before


def test_cross_region_hits_count_clearances_elsewhere_after_the_flag_by_region_pair_and_day(seeded):
    client, _ = seeded
    assert rows(client, "cross_region_hits") == [
        (date(2017, 6, 3), "JS", "ZJ", 1, 1),
        (date(2017, 6, 6), "SH", "AH", 2, 1),
    ]
    # 27 hours after the flag is outside a one-day window; 23 hours is inside, 32 hours is not
    assert rows(client, "cross_region_hits", window_days=1) == [(date(2017, 6, 6), "SH", "AH", 1, 1)]


def test_rising_case_patterns_list_only_significant_rises_of_opened_cases(seeded):
    client, _ = seeded
    assert rows(client, "rising_case_patterns", as_of="2017-06-30") == [
        ("ILLEGAL_STAY", "VISA_OVERSTAY", "VNM", 6, 1.0, 5.0),
    ]
    loose = rows(client, "rising_case_patterns", as_of="2017-06-30", min_z=0, min_cases=1)
    assert [(r[0], r[2], r[3]) for r in loose] == [("ILLEGAL_STAY", "VNM", 6), ("ILLEGAL_ENTRY", "USA", 2),
                                                  ("DOCUMENT_FRAUD", "NGA", 8)]


def test_transit_stays_tell_open_exited_and_overstayed(seeded):
    client, _ = seeded
    got = [(r[0], r[1], r[2], r[6], r[9]) for r in rows(client, "transit_stays", as_of="2017-06-10 00:00:00")]
    assert got == [
        (S2, naive("2017-06-01 00:00:00"), "SH", None, "OVERSTAYED"),
        (S3, naive("2017-06-01 08:00:00"), "JS", naive("2017-06-08 08:00:00"), "OVERSTAYED"),
        (S1, naive("2017-06-01 10:00:00"), "SH", naive("2017-06-03 12:00:00"), "EXITED"),
    ]
    early = rows(client, "transit_stays", as_of="2017-06-03 00:00:00")
    assert sorted((r[0], r[9]) for r in early) == [(S1, "OPEN"), (S2, "OPEN"), (S3, "OPEN")]
    assert [r[0] for r in rows(client, "transit_stays", as_of="2017-06-10 00:00:00", status="EXITED")] == [S1]


def test_port_flow_is_compared_with_the_baseline_of_its_port_hour_and_weekday(seeded):
    client, _ = seeded
    profile = json.loads((reference.DIR / "flow_profile.json").read_text())
    hour = datetime(2017, 6, 1, 10)
    expected = (profile["annual_crossings"] / 8760 * profile["hour_of_day"]["AIR"][10]
                * profile["day_of_week"][hour.weekday()] * reference.regions()["SH"]["share_of_crossings"]
                * reference.ports()["PVG"].share_of_region)
    got = rows(client, "port_flow_baseline", port="PVG", since="2017-06-01 00:00:00", until="2017-06-02 00:00:00")
    assert got == [(hour, "SH", "PVG", 1, round(expected, 1), round(1 / round(expected, 1), 2))]
    assert [(r[0], r[2], r[3]) for r in rows(client, "port_flow_baseline", region="AH")] == [
        (datetime(2017, 6, 6, 9), "HFE", 1), (datetime(2017, 6, 6, 18), "HFE", 1)]


def test_alert_handling_summarises_current_status_per_region(seeded):
    client, _ = seeded
    assert rows(client, "alert_handling") == [
        ("AH", 0, 0, 0, 0, 0, 0, None, 0, 0),
        ("JS", 1, 1, 0, 0, 0, 1, None, 1, 0),
        ("SH", 3, 0, 0, 2, 1, 2, 60.0, 1, 0),
        ("ZJ", 0, 0, 0, 0, 0, 0, None, 1, 0),
    ]


def withdraw(client, db, alert_id, subject, when, must_act, reason, minutes_later=5):
    gone = derived(alert_id, subject, when, must_act)
    gone.update(status="WITHDRAWN", status_reason=reason, emitted_at=at(when) + timedelta(minutes=minutes_later))
    insert(client, db, "derived_alerts", [gone])


def test_alert_handling_counts_a_withdrawn_derived_alert_as_withdrawn_not_to_act_on(seeded):
    client, db = seeded
    withdraw(client, db, "d1", S1, "2017-06-03 12:00:01", ["ZJ"], "flag resolved before the crossing")
    got = {r[0]: (r[8], r[9]) for r in rows(client, "alert_handling")}
    assert got == {"AH": (0, 0), "JS": (1, 0), "SH": (1, 0), "ZJ": (0, 1)}


def test_subject_history_shows_a_withdrawn_derived_alert_once_as_withdrawn_with_its_reason(seeded):
    client, db = seeded
    withdraw(client, db, "d1", S1, "2017-06-03 12:00:01", ["ZJ"], "flag resolved before the crossing")
    got = [r for r in rows(client, "subject_history", subject=S1) if r[1] == "derived_alert"]
    assert [(r[5], r[6]) for r in got] == [
        ("WITHDRAWN (flag resolved before the crossing): CROSS_REGION_HIT d1", "d1")]


def test_late_events_lists_events_published_long_after_they_happened_longest_delay_first(seeded):
    client, db = seeded
    late = clearance(11, S2, "2017-06-10 08:00:00", "SH", "PVG", "EXIT")
    late["published_at"] = at("2017-06-12 10:00:00")                       # 50 h late
    almost = clearance(12, S2, "2017-06-10 09:00:00", "SH", "PVG", "ENTRY")
    almost["published_at"] = at("2017-06-12 08:00:00")                     # 47 h: in time
    insert(client, db, "clearances", [late, almost])
    insert(client, db, "alerts", [
        alert(111, S3, "2017-06-01 00:00:00", "JS", "NKG", published="2017-06-04 00:00:00"),        # 72 h late
        alert(112, S3, "2017-06-02 00:00:00", "JS", "NKG"),                                         # on time ...
        alert(112, S3, "2017-06-02 00:00:00", "JS", "NKG", status="RESOLVED", published="2017-06-06 00:00:00"),
    ])                                                                      # ... resolved 4 days later: not late
    got = [(r[0], r[1], r[3], r[7]) for r in rows(client, "late_events")]
    assert got == [("alert", "JS", _uuid(111), 72.0), ("clearance", "SH", _uuid(11), 50.0)]
    assert [r[3] for r in rows(client, "late_events", min_delay_hours=60)] == [_uuid(111)]
    assert [r[3] for r in rows(client, "late_events", since="2017-06-05 00:00:00")] == [_uuid(11)]


def disposition(n, alert_id, outcome, region, decided, officer="duty"):
    return {"disposition_id": _uuid(n), "alert_id": alert_id, "outcome": outcome, "region": region,
            "officer": officer, "note": "", "must_act": [], "inform": [], "kind": "CROSS_REGION_HIT",
            "severity": "HIGH", "decided_at": at(decided)}


@pytest.fixture
def disposed(seeded):
    """Five standing alerts of two rules (one more withdrawn) and what the regions' officers said of them."""
    client, db = seeded
    alerts = [derived("f1", None, "2017-06-10 10:00:00", ["SH"]), derived("f2", None, "2017-06-10 11:00:00", ["SH"]),
              derived("f3", None, "2017-06-10 12:00:00", ["SH", "JS"]),
              dict(derived("f4", None, "2017-06-10 13:00:00", ["JS"]), rule_id="q"),
              dict(derived("f5", None, "2017-06-10 14:00:00", ["JS"]), rule_id="q"),
              dict(derived("f6", None, "2017-06-10 15:00:00", ["AH"]), status="WITHDRAWN")]
    insert(client, db, "derived_alerts", [{"status": "RAISED", **a} for a in alerts])
    insert(client, db, "dispositions", [
        disposition(1, "f1", "ACKNOWLEDGED", "SH", "2017-06-10 10:02:00"),
        disposition(2, "f1", "CONFIRMED", "SH", "2017-06-10 10:30:00"),
        disposition(2, "f1", "CONFIRMED", "SH", "2017-06-10 10:30:00"),      # recorded twice: one row
        disposition(3, "f2", "ACKNOWLEDGED", "SH", "2017-06-10 11:10:00"),
        disposition(4, "f2", "FALSE_ALARM", "SH", "2017-06-10 11:40:00"),
        disposition(5, "f3", "ACKNOWLEDGED", "JS", "2017-06-10 12:30:00"),
        disposition(6, "f3", "CONFIRMED", "JS", "2017-06-10 13:00:00"),
        disposition(7, "f3", "ACKNOWLEDGED", None, "2017-06-10 12:01:00", officer="rcc"),
        disposition(8, "f4", "NO_ACTION", "JS", "2017-06-10 13:20:00"),
        disposition(9, "f6", "ACKNOWLEDGED", "AH", "2017-06-10 15:01:00"),
    ])
    return client, db


def test_rule_feedback_counts_what_officers_said_of_each_rules_standing_alerts(disposed):
    client, _ = disposed
    got = {(r[0], r[1]): r[2:] for r in rows(client, "rule_feedback", since="2017-06-10 00:00:00",
                                            until="2017-06-11 00:00:00")}
    # rule r: f1 confirmed, f2 false alarm, f3 confirmed (JS) and acknowledged (SH did not): precision 2/3
    # rule q: f4 no action, f5 nothing; the withdrawn f6 does not count
    assert got == {("r", "1"): (3, 3, 2, 1, 0, 0, 0.667), ("q", "1"): (2, 0, 0, 0, 1, 1, None)}


def test_region_response_gives_time_to_acknowledge_and_what_each_region_left_open(disposed):
    client, _ = disposed
    got = {r[0]: r[1:] for r in rows(client, "region_response", since="2017-06-10 00:00:00",
                                     until="2017-06-11 00:00:00")}
    # SH: f1 (2 min), f2 (10 min), f3 (not acknowledged by SH: the command centre's does not count); f3 open
    # JS: f3 (30 min), f4 (settled without acknowledging), f5 (nothing): f5 open
    assert got["SH"][:3] == (3, 2, 6.0) and got["SH"][4] == 1
    assert got["JS"][:3] == (3, 1, 30.0) and got["JS"][3] == 30.0 and got["JS"][4] == 1
    assert "AH" not in got          # its only alert was withdrawn


def test_subject_history_follows_a_derived_alert_with_its_dispositions_and_shows_its_withdrawal_and_escalation(seeded):
    client, db = seeded
    s = "tok-history"
    raised = derived("h1", s, "2017-06-12 08:00:00", ["SH"])
    gone = dict(derived("h2", s, "2017-06-12 09:00:00", ["JS"]), status="WITHDRAWN",
                status_reason="RESOLVED record read later", emitted_at=at("2017-06-12 09:30:00"))
    escalation = dict(derived("h3", s, "2017-06-12 08:00:00", ["SH"], kind="ESCALATION"), rule_id="escalation",
                      inform=["JS", "ZJ", "AH"], emitted_at=at("2017-06-12 08:05:00"))
    insert(client, db, "derived_alerts", [{"status": "RAISED", **raised}, {"status": "RAISED", **gone},
                                          {"status": "RAISED", **escalation}])
    insert(client, db, "dispositions", [
        dict(disposition(21, "h1", "ACKNOWLEDGED", "SH", "2017-06-12 08:07:00"), note="on it"),
        disposition(22, "h1", "CONFIRMED", "SH", "2017-06-12 08:20:00", officer="sh-duty"),
        disposition(23, "h1", "ACKNOWLEDGED", None, "2017-06-12 08:06:00", officer="rcc"),
        disposition(24, "other", "CONFIRMED", "SH", "2017-06-12 08:21:00"),          # another subject's alert
    ])
    got = [(r[1], r[2], r[4], r[5], r[6]) for r in rows(client, "subject_history", subject=s)]
    assert got == [
        ("derived_alert", "SH", "CROSS_REGION_HIT", "CROSS_REGION_HIT h1", "h1"),
        ("derived_alert", "SH", "ESCALATION", "ESCALATION h3", "h3"),
        ("derived_alert.disposition", "RCC", "ACKNOWLEDGED", "rcc 2017-06-12 08:06:00 UTC", "h1"),
        ("derived_alert.disposition", "SH", "ACKNOWLEDGED", "duty 2017-06-12 08:07:00 UTC: on it", "h1"),
        ("derived_alert.disposition", "SH", "CONFIRMED", "sh-duty 2017-06-12 08:20:00 UTC", "h1"),
        ("derived_alert", "JS", "CROSS_REGION_HIT", "WITHDRAWN (RESOLVED record read later): CROSS_REGION_HIT h2", "h2"),
    ]
