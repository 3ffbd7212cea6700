"""The input of the end-to-end benchmark, its peer and its ceiling: the same bytes for all three.

The simulator's traffic of the four regions (the paper's 2017 volumes, so about 156,000 crossings a
simulated day) with cross-region hits planted in it: every ``HIT_EVERY``-th clearance gets a watch-list
hit (``WATCHLIST_HIT``, HIGH) on the same subject one hour of event time earlier in another region. The
simulator's own flagged travellers never cross again, so the planted hits are the cross-region hits of
the input, and ``expected_hits`` counts them with the rule's own definition.

The encoded messages are cached under ``var/bench/`` (generating a million events takes about half a
minute here); ``load(n)`` returns the cached copy when there is one.
"""
from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench import ROOT

CACHE = ROOT / "var" / "bench"
SEED = 11
START = datetime(2017, 6, 5, tzinfo=timezone.utc)
HIT_EVERY = 1000
FLAG_LEAD_MS = 3_600_000
ACTIVE_MS = 30 * 24 * 3_600_000
FLAG_KINDS = ("WATCHLIST_HIT", "FORGED_DOCUMENT", "IMPOSTOR")
VERSION = 2   # bump when the shape of the input changes (the cache is keyed by it)


@dataclass
class Workload:
    """Messages as (bare topic, key, value) in event-time order; no topic prefix."""

    messages: list[tuple[str, bytes, bytes]]
    #: index in ``messages`` of each planted hit's clearance -> its event id
    triggers: dict[int, str] = field(default_factory=dict)
    expected_hits: int = 0
    span_hours: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    subjects: int = 0

    def __len__(self) -> int:
        return len(self.messages)

    def topics(self) -> list[str]:
        return sorted({t for t, _, _ in self.messages})


def _ms(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(milliseconds=1))


def generate(n: int, seed: int = SEED) -> Workload:
    """About ``n`` events of simulated traffic with planted cross-region hits."""
    from connectors.simulator.engine import Options, Simulation
    from schemas import topics
    from schemas.codec import get_codec
    from schemas.reference import REGIONS, ports

    codec = get_codec()
    rng = random.Random(seed)
    by_region: dict[str, list] = {}
    for p in ports().values():
        by_region.setdefault(p.region, []).append(p)
    # ~156,000 events a simulated day at scale 1: a span that holds n of them, with a margin
    sim = Simulation(Options(seed=seed, start=START, span_hours=max(1.0, n / 6_300 * 1.05)))
    events: list[tuple[int, int, str, dict]] = []
    planted: list[tuple[int, int, str, dict]] = []
    clearances = 0
    for t, seq, kind, rec in sim.events():
        if len(events) + len(planted) >= n:
            break
        events.append((t, seq, kind, rec))
        if kind != "clearance":
            continue
        clearances += 1
        if clearances % HIT_EVERY:
            continue
        other = rng.choice([r for r in REGIONS if r != rec["region"]])
        port = rng.choice(by_region[other])
        at = rec["occurred_at"] - timedelta(milliseconds=FLAG_LEAD_MS)
        planted.append((t - FLAG_LEAD_MS, -seq, "alert", {
            "event_id": str(_uuid(rng)), "region": other, "station_id": port.station_id,
            "port_code": port.code, "occurred_at": at, "published_at": at + timedelta(seconds=5),
            "subject": rec["subject"], "kind": "WATCHLIST_HIT", "severity": "HIGH", "source": "WATCHLIST",
            "status": "RAISED", "nationality": rec["nationality"], "document_type": rec["document_type"],
            "document_country": rec["document_country"], "document_series": None, "fraud_method": None,
            "conveyance_type": None, "conveyance_id": None, "description": "planted by the benchmark"}))
    merged = sorted(events + planted, key=lambda e: (e[0], e[1]))
    messages: list[tuple[str, bytes, bytes]] = []
    triggers: dict[int, str] = {}
    planted_subjects = {rec["subject"] for _, _, _, rec in planted}
    by_kind: dict[str, int] = {}
    subjects: set[str] = set()
    for t, seq, kind, rec in merged:
        topic = topics.CONTROL if kind == "control" else topics.source(rec["region"], kind)
        key = (rec.get("case_id") if kind == "case" else rec.get("subject") or rec.get("conveyance_id")
               or rec["event_id"])
        if kind == "clearance":
            subjects.add(rec["subject"])
            if rec["subject"] in planted_subjects:
                triggers[len(messages)] = rec["event_id"]
        by_kind[kind] = by_kind.get(kind, 0) + 1
        messages.append((topic, key.encode(), codec.encode(kind, rec)))
    span = (merged[-1][0] - merged[0][0]) / 3_600_000 if merged else 0.0
    return Workload(messages, triggers, expected_hits(merged), round(span, 2), by_kind, len(subjects))


def _uuid(rng: random.Random):
    import uuid

    return uuid.UUID(int=rng.getrandbits(128), version=4)


def expected_hits(events) -> int:
    """Cross-region hits in the input by the rule's definition (``streams/subject/cross_region_hit.py``): one per
    flag and other region where the flagged subject crosses within ``active_days`` after the flag."""
    flags: dict[str, list[tuple[str, str, int]]] = {}
    for t, _, kind, rec in events:
        if kind == "alert" and rec.get("subject") and rec["kind"] in FLAG_KINDS and rec["status"] == "RAISED":
            flags.setdefault(rec["subject"], []).append((rec["event_id"], rec["region"], t))
    hits = set()
    for t, _, kind, rec in events:
        if kind != "clearance":
            continue
        for fid, region, at in flags.get(rec["subject"], ()):
            if region != rec["region"] and 0 <= t - at <= ACTIVE_MS:
                hits.add((fid, rec["region"]))
    return len(hits)


def load(n: int, seed: int = SEED) -> Workload:
    path = CACHE / f"workload-v{VERSION}-{seed}-{n}.pickle"
    if path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    wl = generate(n, seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(wl, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return wl
