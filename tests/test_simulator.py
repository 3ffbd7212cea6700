"""The traffic simulator: deterministic, shaped by the flow profile, incidents as docs/scenarios.md says."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from connectors.simulator import Options, Simulation
from connectors.simulator.records import HOUR, ms_of
from connectors.simulator.traffic import SERIES_LETTERS
from schemas import reference
from schemas import topics
from schemas.codec import get_codec
from schemas.validation import validate

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
REF = Path(__file__).resolve().parents[1] / "schemas" / "reference"
START = datetime(2017, 6, 5, tzinfo=timezone.utc)
TRUTH_KEYS = ["scenario_id", "scenario", "incident_kind", "expected_alert_kind", "must_notify", "subjects",
              "conveyance_id", "pattern", "port_code", "window_start", "window_end"]


def run(**kw) -> tuple[Simulation, list]:
    sim = Simulation(Options(**kw))
    return sim, list(sim.events())


def ms(text: str) -> int:
    return ms_of(datetime.fromisoformat(text.replace("Z", "+00:00")))


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_the_same_events_ids_and_tokens_included():
    kw = dict(span_hours=6, scale=0.1, scenarios=["all"])
    _, a = run(seed=11, **kw)
    _, b = run(seed=11, **kw)
    _, c = run(seed=12, **kw)
    assert len(a) > 1000
    assert [(e[2], e[3]) for e in a] == [(e[2], e[3]) for e in b]
    assert {e[3]["event_id"] for e in a}.isdisjoint({e[3]["event_id"] for e in c})
    assert len({e[3]["event_id"] for e in a}) == len(a)


def test_events_come_in_event_time_order_and_each_one_is_valid():
    sim, events = run(seed=5, span_hours=8, scale=0.05, scenarios=["all"])
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert all(e[0] == int(e[3]["occurred_at"].timestamp() * 1000) for e in events)
    for _t, _s, kind, record in events:
        validate(kind, record)


# --------------------------------------------------------------------------- baseline shape
def test_baseline_flow_is_poisson_around_the_profile_expectation_per_port_and_hour():
    """The detectors' formula, computed here from the reference files alone, is what the baseline follows."""
    profile = json.loads((REF / "flow_profile.json").read_text())
    shares = {r["code"]: r["share_of_crossings"] for r in json.loads((REF / "regions.json").read_text())["regions"]}
    ports = {p["code"]: p for p in json.loads((REF / "ports.json").read_text())["ports"]
             if p["region"] in ("JS", "AH")}
    _, events = run(seed=3, span_hours=48, regions=["JS", "AH"])
    counts = Counter((e[3]["port_code"], e[0] // HOUR) for e in events if e[2] == "clearance")
    assert set(p for p, _ in counts) == set(ports)
    chi, cells, observed, expected = 0.0, 0, 0, 0.0
    for code, p in ports.items():
        for h in range(48):
            t = START + timedelta(hours=h)
            exp = (profile["annual_crossings"] * shares[p["region"]] * p["share_of_region"] / 8760
                   * profile["hour_of_day"][p["kind"]][t.hour] * profile["day_of_week"][t.weekday()])
            obs = counts.get((code, ms_of(t) // HOUR), 0)
            chi += (obs - exp) ** 2 / exp
            cells += 1
            observed += obs
            expected += exp
    assert abs(observed / expected - 1) < 0.02            # the mean is the profile's
    assert 0.8 < chi / cells < 1.25                        # and the spread is Poisson's: no surge, no lull


def test_profile_curves_have_mean_one_and_the_paper_s_totals():
    profile = json.loads((REF / "flow_profile.json").read_text())
    for kind in ("AIR", "SEA", "RIVER"):
        assert len(profile["hour_of_day"][kind]) == 24
        assert sum(profile["hour_of_day"][kind]) / 24 == pytest.approx(1.0, abs=1e-9)
    assert len(profile["day_of_week"]) == 7 and sum(profile["day_of_week"]) / 7 == pytest.approx(1.0, abs=1e-9)
    assert profile["annual_crossings"] == 56_818_000 and profile["foreign_share"] == 0.226


def test_a_week_of_baseline_keeps_the_guarantees_the_detectors_rely_on():
    sim, events = run(seed=9, span_hours=7 * 24, scale=0.1)
    end = sim.end
    clearances = [e[3] for e in events if e[2] == "clearance"]
    alerts = [e[3] for e in events if e[2] == "alert"]
    assert not [e for e in events if e[2] == "control"]
    foreign = sum(c["nationality"] != "CHN" for c in clearances) / len(clearances)
    assert 0.21 < foreign < 0.245
    assert all(c["entry_basis"] == "CITIZEN" for c in clearances if c["nationality"] == "CHN" and c["lane"] != "CREW")
    # a flagged traveller never crosses again (in any region)
    seen = defaultdict(list)
    for c in clearances:
        seen[c["subject"]].append(c)
    flagged = [a for a in alerts if a["subject"]]
    assert len(flagged) >= 10       # ~30 a day for the whole region, a tenth of it here
    for a in flagged:
        assert len(seen[a["subject"]]) == 1 and seen[a["subject"]][0]["region"] == a["region"]
    # fraud patterns stay in their region; counter-terror and public-health alerts stay low
    regions_of = defaultdict(set)
    for a in alerts:
        if a["kind"] == "FORGED_DOCUMENT":
            key = (a["document_country"], a["document_type"], a["document_series"], a["fraud_method"])
            regions_of[key].add(a["region"])
        if a["kind"] in ("COUNTER_TERROR", "PUBLIC_HEALTH"):
            assert a["severity"] in ("LOW", "MEDIUM")
    assert all(len(r) == 1 for r in regions_of.values())
    pools = [set(letters) for letters in SERIES_LETTERS.values()]      # what makes it so, at any volume
    assert all(a.isdisjoint(b) for i, a in enumerate(pools) for b in pools[i + 1:])
    assert not set().union(*pools) & {"Y", "Z"}                           # the scripted pattern's letters
    # transit travellers leave within 144 h, toward a third country, from a port of SH, JS or ZJ
    entries = {c["subject"]: c for c in clearances if c["entry_basis"] == "TRANSIT_144H" and c["direction"] == "ENTRY"}
    exits = {c["subject"]: c for c in clearances if c["entry_basis"] == "TRANSIT_144H" and c["direction"] == "EXIT"}
    assert len(entries) > 20 and set(exits) <= set(entries)
    for subject, entry in entries.items():
        t_in = entry["occurred_at"]
        if subject in exits:
            out = exits[subject]
            assert out["occurred_at"] - t_in <= timedelta(hours=144)
            assert out["destination_country"] not in (None, entry["origin_country"], "CHN")
            assert out["region"] in ("SH", "JS", "ZJ")
        else:
            assert ms_of(t_in) + 120 * HOUR + HOUR >= end, "a transit traveller stayed beyond the plan"
    # a flight or a vessel's call is seen at one port only (two ports would look like a diversion)
    ports_of = defaultdict(set)
    for c in clearances:
        ports_of[c["conveyance_id"]].add(c["port_code"])
    assert all(len(p) == 1 for p in ports_of.values())
    assert all(c["scheduled_port"] is None for c in clearances)
    # cases: every case opens before its other stages, and closes last
    stages = defaultdict(list)
    for e in events:
        if e[2] == "case":
            stages[e[3]["case_id"]].append(e[3]["stage"])
    assert stages and all(s[0] == "OPENED" for s in stages.values())
    assert all("CLOSED" not in s[:-1] for s in stages.values())


# --------------------------------------------------------------------------- incidents
def test_scripted_incidents_hide_in_the_traffic_as_the_scenarios_document_says(tmp_path):
    sim, events = run(seed=7, span_hours=30, scale=0.05, scenarios=["all"])
    start, end = sim.start, sim.end
    path = tmp_path / "t.jsonl"
    assert sim.write_truth(path) == 15
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(list(r) == TRUTH_KEYS + (["optional"] if r.get("optional") else []) for r in rows)
    assert [(r["scenario_id"], r["expected_alert_kind"], r["port_code"]) for r in rows if r.get("optional")] == [
        ("h-1", "FLOW_SURGE_SUPPORT", "HGH")]
    by = defaultdict(list)
    for r in rows:
        by[r["scenario"]].append(r)
        assert start <= ms(r["window_start"]) <= ms(r["window_end"]) <= end
        assert r["must_notify"] == sorted(r["must_notify"]) and set(r["must_notify"]) <= set(reference.REGIONS)
    kinds = {name: sorted((r["expected_alert_kind"], tuple(r["must_notify"])) for r in rs) for name, rs in by.items()}
    assert kinds == {
        "cross_region_hit": [("CROSS_REGION_HIT", ("JS", "SH"))],
        "port_shopping": [("PORT_SHOPPING", ("SH", "ZJ"))],
        "fraud_spread": [("DOCUMENT_FRAUD_SPREAD", ("AH", "JS", "SH", "ZJ"))],
        "case_surge": [("SYSTEMIC_ESCALATION", ("AH", "JS", "SH", "ZJ")), ("TREND_RISING", ("AH", "JS", "SH", "ZJ")),
                       ("TREND_RISING", ("JS", "SH", "ZJ"))],
        "transit_overstay": [("TRANSIT_OVERSTAY", ("JS", "SH", "ZJ"))],
        "transit_exit_to_origin": [("TRANSIT_EXIT_TO_ORIGIN", ("JS", "SH"))],
        "transit_out_of_area": [("TRANSIT_OUT_OF_AREA", ("AH", "SH"))],
        "diverted_flight": [("CONVEYANCE_DIVERTED", ("SH", "ZJ")), ("CROSS_REGION_HIT", ("SH", "ZJ")),
                            ("FLOW_SURGE_SUPPORT", ("ZJ",))],
        "flow_surge": [("FLOW_SURGE_SUPPORT", ("AH", "JS", "SH", "ZJ"))],
        "heightened_mode": [("BROADCAST", ("AH", "JS", "SH", "ZJ")), ("HEIGHTENED_MODE", ("AH", "JS", "SH", "ZJ"))],
    }
    recs = [(e[2], e[3]) for e in events]
    of = lambda subject: [(k, r) for k, r in recs if r.get("subject") == subject]  # noqa: E731

    # e: the backdated transit entry is the very first event, 138 h before the start; its subject never leaves
    (e_row,) = by["transit_overstay"]
    first_kind, first = recs[0]
    assert first_kind == "clearance" and first["subject"] == e_row["subjects"][0]
    assert ms_of(first["occurred_at"]) == start - 138 * HOUR and first["entry_basis"] == "TRANSIT_144H"
    assert ms(e_row["window_start"]) == start + 6 * HOUR and len(of(first["subject"])) == 1

    # a: HIGH watch-list hit in SH, later a crossing in JS inside the window
    (a_row,) = by["cross_region_hit"]
    a = of(a_row["subjects"][0])
    hit = next(r for k, r in a if k == "alert")
    assert (hit["kind"], hit["severity"], hit["region"]) == ("WATCHLIST_HIT", "HIGH", "SH")
    later = [r for k, r in a if k == "clearance" and r["region"] == "JS"]
    assert len(later) == 1 and ms(a_row["window_start"]) <= ms_of(later[0]["occurred_at"]) <= ms(a_row["window_end"])

    # b: refused in ZJ, an attempt in SH within 48 h, and no alert of another kind on the way
    (b_row,) = by["port_shopping"]
    b = of(b_row["subjects"][0])
    assert [(k, r["region"], r.get("decision") or r.get("kind")) for k, r in b] == [
        ("alert", "ZJ", "REFUSAL"), ("clearance", "ZJ", "REFUSED"), ("clearance", "SH", "REFERRED")]
    assert b[2][1]["occurred_at"] - b[0][1]["occurred_at"] < timedelta(hours=48)

    # c: the pattern in SH, JS and ZJ; the spread alert is due when the second region is hit
    (c_row,) = by["fraud_spread"]
    hits = [r for k, r in recs if k == "alert" and r["kind"] == "FORGED_DOCUMENT" and "/".join(
        (r["document_country"], r["document_type"], r["document_series"], r["fraud_method"])) == c_row["pattern"]]
    assert [h["region"] for h in hits] == ["SH", "JS", "ZJ"]
    assert ms_of(hits[1]["occurred_at"]) == ms(c_row["window_start"])

    # d: six stowaway cases opened at ZJ's seaports, then six at SH's, well above a baseline of ~0.1 a day
    opened = [r for k, r in recs if k == "case" and r["stage"] == "OPENED" and r["case_type"] == "STOWAWAY"]
    assert Counter(r["region"] for r in opened)["ZJ"] >= 6 and Counter(r["region"] for r in opened)["SH"] >= 6
    assert all(reference.ports()[r["port_code"]].kind != "AIR" for r in opened)

    # f, g: transit exits toward the origin (from JS) and out of the permitted area (AH)
    (f_row,) = by["transit_exit_to_origin"]
    f_in, f_out = [r for _, r in of(f_row["subjects"][0])]
    assert f_out["destination_country"] == f_in["origin_country"] and f_out["region"] == "JS"
    (g_row,) = by["transit_out_of_area"]
    g_in, g_out = [r for _, r in of(g_row["subjects"][0])]
    assert g_in["entry_basis"] == "TRANSIT_144H" and g_out["region"] == "AH"
    assert g_out["destination_country"] != g_in["origin_country"]

    # h: SH's pending alert for a passenger; the flight's clearances at HGH carry scheduled_port PVG
    diverted = next(r for r in by["diverted_flight"] if r["expected_alert_kind"] == "CONVEYANCE_DIVERTED")
    landed = [r for k, r in recs if k == "clearance" and r["conveyance_id"] == diverted["conveyance_id"]]
    assert len(landed) > 100 and all((r["port_code"], r["scheduled_port"]) == ("HGH", "PVG") for r in landed)
    pending = [r for k, r in recs if k == "alert" and r["conveyance_id"] == diverted["conveyance_id"]]
    assert [(p["region"], p["port_code"], p["kind"]) for p in pending] == [("SH", "PVG", "WATCHLIST_HIT")]
    assert pending[0]["subject"] in {r["subject"] for r in landed}
    assert pending[0]["occurred_at"] < min(r["occurred_at"] for r in landed)

    # i: Ningbo airport at four times its flow during the expo hours
    (i_row,) = by["flow_surge"]
    surge = [r for k, r in recs if k == "clearance" and r["port_code"] == "NGB"
             and ms(i_row["window_start"]) <= ms_of(r["occurred_at"]) < ms(i_row["window_end"]) - HOUR]
    port = reference.ports()["NGB"]
    hours = (ms(i_row["window_end"]) - HOUR - ms(i_row["window_start"])) // HOUR
    mean = sim.baseline.profile.expected(port, ms(i_row["window_start"])) * 0.05
    assert len(surge) > 2.5 * mean * hours

    # j: the control event, and the scripted alert is the only HIGH alert of SH inside the window
    (control,) = [r for k, r in recs if k == "control"]
    assert control["regions"] == ["SH"] and control["threshold_multiplier"] < 1
    inside = [r for k, r in recs if k == "alert" and r["region"] == "SH" and r["severity"] in ("HIGH", "CRITICAL")
              and control["starts_at"] <= r["occurred_at"] < control["ends_at"]]
    broadcast = next(r for r in by["heightened_mode"] if r["expected_alert_kind"] == "BROADCAST")
    assert [(r["kind"], r["subject"]) for r in inside] == [("SMUGGLING", broadcast["subjects"][0])]


def test_a_scenario_whose_regions_are_not_simulated_is_skipped_and_said_so():
    sim = Simulation(Options(span_hours=2, regions=["AH"], scenarios=["transit_out_of_area", "i"]))
    assert sim.incidents == [] and set(sim.skipped) == {"transit_out_of_area", "flow_surge"}


# --------------------------------------------------------------------------- on the broker
def high_watermark(consumer, tp, tries: int = 50) -> int:
    """The end offset of ``tp``; a just-created topic may answer 'not leader' for a moment."""
    for _ in range(tries):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException:
            time.sleep(0.2)
    return consumer.get_watermark_offsets(tp, timeout=10)[1]


def _consume_all(bootstrap: str, names: list[str]) -> dict[str, list]:
    """Every message of ``names`` from the beginning to the current end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    md = c.list_topics(timeout=10)
    parts = [TopicPartition(t, p, 0) for t in names if t in md.topics for p in md.topics[t].partitions]
    ends = {(tp.topic, tp.partition): high_watermark(c, tp) for tp in parts}
    c.assign(parts)
    out: dict[str, list] = defaultdict(list)
    left = {k for k, v in ends.items() if v > 0}
    while left:
        msg = c.poll(5)
        assert msg is not None, f"no message within 5 s; still waiting for {sorted(left)[:3]}"
        assert not msg.error(), msg.error()
        out[msg.topic()].append(msg)
        if msg.offset() + 1 >= ends[(msg.topic(), msg.partition())]:
            left.discard((msg.topic(), msg.partition()))
    c.close()
    return out


def test_simulate_stopped_with_sigterm_sums_up_and_writes_the_truth_of_the_incidents_it_completed(kafka, unique,
                                                                                                    tmp_path):
    """A supervisor stops the simulator with SIGTERM (`yrdbus run` past its time): like Ctrl-C, the run ends with
    its summary and the ground truth of what it published, not with nothing."""
    import signal

    prefix = f"{unique}."
    truth = tmp_path / "t.jsonl"
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap}
    proc = subprocess.Popen([YRDBUS, "simulate", "--seed", "7", "--speed", "7200", "--duration", "600", "--scale",
                             "0.05", "--scenarios", "all", "--truth", str(truth), "--json", "--prefix", prefix],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        topic = prefix + topics.source("SH", "clearance")
        c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"{unique}-probe"})
        deadline, published = time.monotonic() + 90, 0
        while time.monotonic() < deadline and not published and proc.poll() is None:
            try:   # a topic the simulator just created has no leader for a moment
                meta = c.list_topics(timeout=5).topics.get(topic)
                if meta is not None and not meta.error:
                    published = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                                    for p in meta.partitions)
            except KafkaException:
                pass
            time.sleep(0.2)
        c.close()
        assert published, "the simulator published nothing"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    summary = json.loads(out)
    assert summary["stopped"] == "interrupted" and summary["events"] == summary["delivered"] > 0
    rows = [json.loads(line) for line in truth.read_text().splitlines() if line.strip()]
    assert summary["truth_rows"] == len(rows)
    complete = {i["scenario_id"] for i in summary["incidents"] if i["complete"]}
    assert {r["scenario_id"] for r in rows} <= complete
    assert any(not i["complete"] for i in summary["incidents"]), "the whole span was published before the signal"


def test_simulate_publishes_consumable_events_in_per_subject_order_with_the_truth_file(kafka, unique, tmp_path):
    prefix = f"{unique}."
    truth = tmp_path / "t.jsonl"
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap}
    out = subprocess.run([YRDBUS, "simulate", "--seed", "7", "--span", "30", "--rate", "100000", "--scale", "0.05",
                          "--scenarios", "all", "--truth", str(truth), "--json", "--prefix", prefix],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["events"] == summary["delivered"] > 8000 and summary["failed"] == 0
    assert summary["truth_rows"] == 15 and all(i["complete"] for i in summary["incidents"])

    names = [prefix + topics.source(r, k) for r in reference.REGIONS for k in ("clearance", "alert", "case")]
    got = _consume_all(kafka.bootstrap, names + [prefix + topics.CONTROL])
    codec = get_codec()
    decoded_ids = []
    per_key: dict[tuple, list] = defaultdict(list)
    for topic, msgs in got.items():
        for m in msgs:
            kind, record = codec.decode(m.value())
            validate(kind, record)
            assert topic == (prefix + topics.CONTROL if kind == "control" else prefix + topics.source(record["region"], kind))
            key = {"clearance": record.get("subject"), "case": record.get("case_id"),
                   "control": record.get("event_id")}.get(kind) or record.get("subject") or record.get("conveyance_id")
            assert m.key() == key.encode()
            per_key[(topic, m.key())].append((m.partition(), m.offset(), record["occurred_at"]))
            decoded_ids.append(record["event_id"])
    by_kind_region = defaultdict(Counter)
    for topic, msgs in got.items():
        parts = topic[len(prefix):].split(".")
        kind, region = ("control", "ALL") if parts == ["control"] else (parts[2], parts[1])
        by_kind_region[kind][region] += len(msgs)
    assert {k: dict(v) for k, v in by_kind_region.items()} == summary["by_kind_region"]
    # per-subject (per-key) order: one partition, and offsets in event-time order
    for key, seq in per_key.items():
        assert len({p for p, _, _ in seq}) == 1, key
        assert [t for _, _, t in sorted(seq)] == sorted(t for _, _, t in seq), key
    # what is on the broker is exactly the seeded run: the same seed, the same events
    expected = Simulation(Options(seed=7, span_hours=30, rate=100000, scale=0.05, scenarios=["all"]))
    assert sorted(decoded_ids) == sorted(e[3]["event_id"] for e in expected.events())


@pytest.mark.parametrize("during", [True, False])
def test_an_interruption_counts_the_event_being_handed_over_and_stops_after_it(during):
    """A signal handler's ``interrupt()`` while an event is being handed to the producer stops the run right after
    it is counted; between events, at once: either way the summary counts exactly the events handed over and the
    run ends at the last of them."""
    sim = Simulation(Options(seed=7, span_hours=6, scale=0.01, rate=1_000_000, scenarios=[]))
    handed: list[int] = []

    def publish(kind, record):
        handed.append(ms_of(record["occurred_at"]))
        if len(handed) == 50 and during:
            sim.interrupt()

    def progress(p):        # called between events (the clock below moves a second a call: at every event)
        if len(handed) >= 50 and not during:
            sim.interrupt()

    ticks = iter(range(10**9))
    summary = sim.run(publish, progress=progress, clock=lambda: float(next(ticks)))
    assert summary["stopped"] == "interrupted"
    assert summary["events"] == len(handed) >= 50
    assert sum(summary["by_kind"].values()) == len(handed)
    assert ms(summary["end"]) == max(handed)
    if during:
        assert len(handed) == 50


def test_a_span_that_would_run_ahead_of_the_clock_is_refused_and_an_open_run_stops_at_the_present():
    from connectors.simulator import SimulationError

    now = datetime.now(timezone.utc)
    with pytest.raises(SimulationError, match="in the future"):
        Simulation(Options(start=now - timedelta(hours=1), span_hours=2))
    sim = Simulation(Options(start=now - timedelta(minutes=20), rate=1_000_000, scale=0.01, regions=["AH"]))
    summary = sim.run(lambda kind, record: None)
    assert summary["stopped"].startswith("reached the present")
    assert ms(summary["end"]) <= ms_of(datetime.now(timezone.utc)) + 5 * 60 * 1000
