"""Scoring derived alerts against the simulator's ground truth (docs/scenarios.md).

A derived alert matches a truth row when its kind is the row's
``expected_alert_kind``, its ``occurred_at`` lies in [window_start, window_end],
the row's ``must_notify`` regions are all among its must_act ∪ inform, and every
identifier the row gives (subjects, conveyance_id, pattern, port_code) agrees.
A scenario is detected when every one of its rows is matched, except rows marked
``"optional": true`` (an alert the incident may cause, depending on the traffic
around it: matched, it is not a false alert); recall = detected scenarios /
scenarios; precision = matched alerts / all alerts.
Detection delay = emitted_at minus the publication time of the evidence that
completed the alert (reported, not scored).

An alert id can come in several versions (a re-emission, or the version that
withdraws it when events read later disprove it): the last one by emitted_at
decides. A withdrawn alert is not a raised one: neither a true nor a false
alert, it detects nothing (counted apart, ``withdrawn``). The delay is taken
from the id's first emission.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from streams.derived import is_live
from streams.escalation import KIND as ESCALATION
from streams.events import iso, to_ms


class TruthError(ValueError):
    pass


def _ms(value, where: str, field: str) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise TruthError(f"{where}, field `{field}`: expected an ISO 8601 time, got {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return to_ms(dt)
    raise TruthError(f"{where}, field `{field}`: expected a time, got {value!r}")


REQUIRED = ("scenario_id", "expected_alert_kind", "must_notify", "window_start", "window_end")


def load_truth(path: str | Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TruthError(f"{where}: not JSON ({exc.msg})") from None
        rows.append(normalise_row(row, where))
    return rows


def normalise_row(row: dict, where: str = "truth row") -> dict:
    for f in REQUIRED:
        if f not in row:
            raise TruthError(f"{where}, field `{f}`: missing (a truth row needs {', '.join(REQUIRED)})")
    return {**row, "_start": _ms(row["window_start"], where, "window_start"),
            "_end": _ms(row["window_end"], where, "window_end")}


def normalise_alert(a: dict) -> dict:
    out = dict(a)
    for f in ("occurred_at", "emitted_at"):
        if out.get(f) is not None:
            out[f] = _ms(out[f], f"alert {a.get('alert_id')}", f)
    return out


def matches(row: dict, alert: dict) -> bool:
    if alert.get("kind") != row["expected_alert_kind"]:
        return False
    if not (row["_start"] <= alert["occurred_at"] <= row["_end"]):
        return False
    regions = set(alert.get("must_act") or []) | set(alert.get("inform") or [])
    if not set(row.get("must_notify") or []) <= regions:
        return False
    if row.get("subjects") and alert.get("subject") not in row["subjects"]:
        return False
    for f in ("conveyance_id", "pattern", "port_code"):
        if row.get(f) is not None and alert.get(f) != row[f]:
            return False
    return True


def last_versions(alerts: list[dict]) -> list[dict]:
    """One alert an id: its last version by emitted_at (of two emitted at the same time, the one read later), with
    ``_first_emitted``, the earliest emitted_at of the id; in the order the ids were first read."""
    latest: dict[str, dict] = {}
    for a in alerts:
        a = normalise_alert(a)
        prev = latest.get(a["alert_id"])
        first = a.get("emitted_at")
        if prev is not None:
            if prev["_first_emitted"] is not None:
                first = prev["_first_emitted"] if first is None else min(first, prev["_first_emitted"])
            if (a.get("emitted_at") or 0) < (prev.get("emitted_at") or 0):
                prev["_first_emitted"] = first
                continue
        latest[a["alert_id"]] = {**a, "_first_emitted": first}
    return list(latest.values())


def score(truth: list[dict], alerts: list[dict]) -> dict:
    """Precision and recall of the detections (an ESCALATION says that officers did not answer an alert in time,
    not what happened at the border: counted apart, as ``escalations``)."""
    every = last_versions(alerts)
    versions = [a for a in every if a["kind"] != ESCALATION]
    escalations = sum(1 for a in every if a["kind"] == ESCALATION and is_live(a))
    unique = [a for a in versions if is_live(a)]
    withdrawn = [a for a in versions if not is_live(a)]
    truth = [row if "_start" in row else normalise_row(row, f"truth row {n}") for n, row in enumerate(truth, 1)]
    matched_ids: set[str] = set()
    scenarios: dict[str, dict] = {}
    for row in truth:
        hits = [a for a in unique if matches(row, a)]
        matched_ids |= {a["alert_id"] for a in hits}
        first = min(hits, key=lambda a: (a.get("_first_emitted") or 0)) if hits else None
        delay = None
        if first is not None and first.get("_first_emitted") and (first.get("details") or {}).get("evidence_published_at"):
            delay = round((first["_first_emitted"] - int(first["details"]["evidence_published_at"])) / 1000, 3)
        sc = scenarios.setdefault(row["scenario_id"], {
            "scenario_id": row["scenario_id"], "scenario": row.get("scenario"), "detected": True, "rows": []})
        sc["rows"].append({"expected_alert_kind": row["expected_alert_kind"], "must_notify": row.get("must_notify"),
                           "matched": bool(hits), "alert_ids": sorted(a["alert_id"] for a in hits),
                           "delay_s": delay, **({"optional": True} if row.get("optional") else {})})
        sc["detected"] = sc["detected"] and (bool(hits) or bool(row.get("optional")))
    for sc in scenarios.values():
        delays = [r["delay_s"] for r in sc["rows"] if r["delay_s"] is not None]
        sc["delay_s"] = max(delays) if delays else None
    false = [a for a in unique if a["alert_id"] not in matched_ids]
    n_sc = len(scenarios)
    detected = sum(1 for s in scenarios.values() if s["detected"])
    return {
        "precision": round((len(unique) - len(false)) / len(unique), 6) if unique else 1.0,
        "recall": round(detected / n_sc, 6) if n_sc else 1.0,
        "alerts": len(unique),
        "matched_alerts": len(unique) - len(false),
        "withdrawn": len(withdrawn),
        "escalations": escalations,
        "withdrawn_alerts": [{"alert_id": a["alert_id"], "kind": a["kind"], "occurred_at": iso(a["occurred_at"]),
                              "reason": a.get("status_reason"), "summary": a.get("summary")} for a in withdrawn],
        "scenarios": sorted(scenarios.values(), key=lambda s: s["scenario_id"]),
        "false_alerts": [{"alert_id": a["alert_id"], "kind": a["kind"], "rule_id": a.get("rule_id"),
                          "occurred_at": iso(a["occurred_at"]),
                          "regions": sorted(set(a.get("must_act") or []) | set(a.get("inform") or [])),
                          "subject": a.get("subject"), "pattern": a.get("pattern"), "port_code": a.get("port_code"),
                          "summary": a.get("summary")} for a in false],
    }


def read_alerts_file(path: str | Path) -> list[dict]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TruthError(f"{path} line {n}: not JSON ({exc.msg})") from None
    return out


def read_alerts_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict]:
    """Every derived alert on ``topic``, from the beginning to the end offsets at the time of the call."""
    import time
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas.codec import get_codec
    from streams.events import plain

    codec = get_codec()
    from schemas.kafka_config import kafka_security

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"yrdbus-evaluate-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", **kafka_security()})
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        t = md.topics.get(topic)
        if t is None or t.error or not t.partitions:
            return []
        ends, parts = {}, []
        for p in t.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not parts:
            return []
        consumer.assign(parts)
        out, deadline = [], time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            _, rec = codec.decode(msg.value(), "derived_alert")
            out.append(plain("derived_alert", rec))
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
        return out
    finally:
        consumer.close()
