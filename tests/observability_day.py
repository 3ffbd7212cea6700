"""A simulated day in a ClickHouse database, for the dashboards' and the report's tests.

The simulator's engine draws one day of the four regions' traffic with the scripted incidents
(scaled down to stay fast); the stream layer's pure rules replay it in-process in event-time order
(the subject stage, the flow counter and the regional stage, as a worker wires them) to derive
alerts, trends and risk scores; everything is published to a private copy of the bus on the test
broker, with a few records that break the contract, and the real sink stores it all (dead letters
included) in its own database.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry

from connectors.publisher import StationPublisher
from connectors.simulator import Options, Simulation
from connectors.store import Target, migrate
from connectors.store.sink import Sink
from schemas import topics
from schemas.codec import get_codec
from streams import ruleset
from streams import subject as subject_rules
from streams.events import for_avro, plain
from streams.flow import FlowCounter
from streams.regional import RegionalRules

DAY_START = datetime(2017, 6, 5, tzinfo=timezone.utc)   # a Monday, the simulator's default start


@dataclass
class SeededDay:
    database: str
    first_event: datetime
    last_event: datetime
    seeded_from: datetime          # wall clock: the pipeline's own records (dead letters, batches) are after this
    seeded_to: datetime
    counts: dict


def derive(events: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The stream layer's outputs (derived_alert, trend, risk) for these events, replayed in event-time order."""
    rs = ruleset.default()
    srules, rrules, counter = subject_rules.SubjectRules(rs), RegionalRules(rs), FlowCounter(rs)
    lateness = rs.minutes_ms("event_time", "lateness_minutes")
    subjects: dict[str, dict] = {}
    deadlines: list[tuple[int, str]] = []
    rstate, fstate = rrules.new_state(), counter.new_state()
    outs: list = []
    watermark, newest = -(1 << 62), -(1 << 62)

    def on_subject(s: str, ev: dict) -> None:
        state = subjects.get(s)
        if state is None:
            state = subjects[s] = subject_rules.new_state()
        outs.extend(srules.on_event(state, ev, s))
        d = subject_rules.next_deadline(state)
        if d is not None:
            heapq.heappush(deadlines, (d, s))

    for kind, rec in events:
        ev = plain(kind, rec)
        if kind == "control":
            ev["occurred_at"] = ev.get("occurred_at") or ev["starts_at"]
            outs.extend(rrules.on_event(rstate, ev))
            continue
        if kind == "clearance":
            on_subject(rec["subject"], ev)
            for p in counter.on_clearance(fstate, ev, 0, watermark):
                outs.extend(rrules.on_event(rstate, p))
            if ev.get("scheduled_port") or rrules.vessel.wants(ev):
                outs.extend(rrules.on_event(rstate, ev))
        elif kind == "alert":
            if rec.get("subject"):
                on_subject(rec["subject"], ev)
            outs.extend(rrules.on_event(rstate, ev))
        elif kind == "case":
            for s in sorted(set(rec.get("subjects") or [])):
                on_subject(s, ev)
            outs.extend(rrules.on_event(rstate, ev))
        newest = max(newest, ev["occurred_at"])
        if newest - lateness >= watermark + 60_000:     # move the watermark a minute at a time
            watermark = newest - lateness
            while deadlines and deadlines[0][0] < watermark:
                d, s = heapq.heappop(deadlines)
                if subject_rules.next_deadline(subjects[s]) == d:
                    outs.extend(srules.on_watermark(subjects[s], s, watermark))
            for p in counter.on_watermark(fstate, watermark, 0):
                outs.extend(rrules.on_event(rstate, p))
            outs.extend(rrules.on_watermark(rstate, watermark)[0])
    return outs


class _Undecodable(Exception):
    pass


def sink_caught_up(bootstrap: str, group: str, prefix: str) -> bool:
    """Whether ``group`` has committed the end of every partition of the topics the sink reads under ``prefix``."""
    import re

    from confluent_kafka.admin import AdminClient

    from connectors.store.tables import sink_topics
    from kit.faults import committed_everything

    named, pattern = sink_topics(prefix)
    present = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return committed_everything(bootstrap, group, [t for t in present if t in named or re.match(pattern, t)])


MINUTE = 60_000


def answers(alerts: list[dict], now: int) -> tuple[list[dict], list[dict]]:
    """What the officers said of the must-act alerts (emitted at ``now``): of each four in event-time order one
    acknowledged and confirmed, one acknowledged and a false alarm, one settled as no action and one left alone;
    and the ESCALATION alerts the escalation stage raises for the unanswered CRITICAL and HIGH ones."""
    from connectors.gateway.dispositions import disposition_id
    from streams.escalation import EscalationStage

    plan = [[("ACKNOWLEDGED", 2), ("CONFIRMED", 10)], [("ACKNOWLEDGED", 4), ("FALSE_ALARM", 20)],
            [("NO_ACTION", 6)], []]
    must = sorted((a for a in alerts if a["must_act"] and a["kind"] != "ESCALATION"),
                  key=lambda a: (a["occurred_at"], a["alert_id"]))
    dispositions = []
    for i, a in enumerate(must):
        region = a["must_act"][0]
        for outcome, minutes in plan[i % len(plan)]:
            dispositions.append({
                "disposition_id": disposition_id(a["alert_id"], region, "ack" if outcome == "ACKNOWLEDGED" else "settle"),
                "alert_id": a["alert_id"], "outcome": outcome, "region": region, "officer": f"{region.lower()}-duty",
                "note": "", "must_act": a["must_act"], "inform": a["inform"], "kind": a["kind"],
                "severity": a["severity"], "decided_at": now + minutes * MINUTE})
    table: dict = {}
    stage = EscalationStage(ruleset.default(), table)
    records = [{"_kind": "alert", **a, "status": "RAISED", "emitted_at": now} for a in must]
    records += [{"_kind": "disposition", "alert_id": d["alert_id"], "region": d["region"], "outcome": d["outcome"],
                 "decided_at": d["decided_at"]} for d in dispositions]
    records.append({"_kind": "tick", "now": now + 24 * 60 * MINUTE})
    escalations = []
    for rec in records:
        step = stage.step(rec)
        escalations += [out for _, out in step.outs]
        for k, v in step.writes.items():
            table[k] = v
    return dispositions, escalations


def seed(client, database: str, bootstrap: str, prefix: str, *, scale: float = 0.3, seed: int = 7) -> SeededDay:
    """Store a simulated day (and its derived outputs and a few dead letters) in ``database``."""
    migrate(client, Target(database=database))
    sim = Simulation(Options(seed=seed, span_hours=24, scenarios=["all"], scale=scale, start=DAY_START))
    events = [(kind, rec) for _, _, kind, rec in sim.events()]
    outputs = derive(events)
    seeded_from = datetime.now(timezone.utc)
    topics.apply(bootstrap, prefix=prefix)
    codec = get_codec()
    publisher = StationPublisher(bootstrap, topic_prefix=prefix, registry=CollectorRegistry(), client_id="seed")
    for kind, rec in events:
        publisher.publish(kind, rec)
    now = int(time.time() * 1000)
    out_topic = {"derived_alert": topics.DERIVED_ALERTS, "trend": topics.TRENDS, "risk": topics.RISK_SCORES}
    dispositions, escalations = answers([rec for kind, rec in outputs if kind == "derived_alert"], now)
    outputs += [("derived_alert", rec) for rec in escalations]
    for kind, rec in outputs:
        rec["emitted_at"] = now
        key = rec.get("alert_id") or rec.get("signal_id") or f"{rec.get('subject_kind')}:{rec.get('subject')}"
        publisher.produce(prefix + out_topic[kind], codec.encode(kind, for_avro(rec)), key.encode())
    for rec in dispositions:
        publisher.produce(prefix + topics.DISPOSITIONS, codec.encode("disposition", rec), rec["alert_id"].encode())
    # records that break the contract: the sink sets them aside on dlq.<topic>, then stores them as dead letters
    for i, raw in enumerate((b"not an event", b"\x00\x00\x00\x03\xe7 unknown schema id")):
        publisher.produce(prefix + topics.source("SH", "clearance"), raw, f"bad-{i}".encode())
    if publisher.close(60):
        raise RuntimeError("the seed's events were not all delivered")
    # the sink runs until its group has committed the end of every topic it reads (its own dead letters, read
    # back, included): a run that stops after 4 s without a record may not have been assigned every topic yet
    stats: dict = {}
    for _ in range(8):
        sink = Sink(bootstrap=bootstrap, client=client, database=database, embedded=True, group=f"{prefix}sink",
                    prefix=prefix, batch_age_s=0.5)
        for k, v in sink.run(duration=120, idle_exit_s=4).items():
            stats[k] = stats.get(k, 0) + v if isinstance(v, (int, float)) else v
        if sink_caught_up(bootstrap, f"{prefix}sink", prefix):
            break
    else:
        raise RuntimeError(f"the sink did not store the seeded day ({stats})")
    when = [r["occurred_at"] for _, r in events]
    counts = {k: sum(1 for kk, _ in events if kk == k) for k in ("clearance", "alert", "case", "control")}
    counts.update({k: sum(1 for kk, _ in outputs if kk == k) for k in out_topic})
    counts.update(dispositions=len(dispositions), escalations=len(escalations))
    counts["sink"] = stats
    return SeededDay(database, min(when), max(when), seeded_from, datetime.now(timezone.utc), counts)
