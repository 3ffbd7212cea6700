"""The escalation stage: a must-act alert nobody acknowledged in time is raised again, to the command centre.

It reads ``streams.escalation`` (one partition), which the worker fills with three kinds of record, in the order
it reads them:

- an alert: the facts of a derived alert (``alerts.derived``) the stage needs, its ``emitted_at`` included;
- a disposition: an officer's acknowledgement or settlement (``dispositions``): alert id, region, ``decided_at``;
- a tick: the wall clock of a worker (every 2 s), so that time runs out with nothing else read.

An alert of a severity named in the rule set's ``[escalation.minutes]`` with regions that must act is **due**
that many minutes after it was first emitted (the moment officers got it). Once the stage's clock (the largest
tick read) passes that time, every must-act region without a disposition decided by then is *silent*; if any is,
the stage raises one ESCALATION alert: must act, the silent regions again; informed, every other region (the
regional command centre sees all). Its id is made of the alert's id, so a replay cannot make a second one; its
event time is the alert's (what it is about), and ``details`` name the due time. An escalation stands on the events alone: a disposition decided in time but read
after the escalation withdraws it (the same id, status WITHDRAWN), as does the alert's own withdrawal; one
decided after the due time changes nothing. An escalation is never escalated.

The state is one entry per alert id in the stage's table (a changelog), kept ``keep_days`` after its due time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from streams import derived
from streams.ruleset import RuleSet, RuleSetError

KIND = "ESCALATION"
RULE_ID = "escalation"
CLOCK_KEY = "~clock"
DAY_MS = 86_400_000


@dataclass
class Step:
    """What one record made the stage do: alerts to emit and table writes (None: delete)."""

    outs: list = field(default_factory=list)
    writes: dict = field(default_factory=dict)


def limits(rs: RuleSet) -> dict[str, int]:
    """Severity -> milliseconds until an unacknowledged alert of it is escalated (``[escalation.minutes]``)."""
    section = rs.sections.get("escalation")
    if section is None:
        return {}
    minutes = section.get("minutes", {})
    if not isinstance(minutes, dict):
        raise RuleSetError(f"rule set {rs.source}: [escalation.minutes] must be a table of severity = minutes")
    out = {}
    for severity, value in minutes.items():
        if severity not in derived.SEVERITIES:
            raise RuleSetError(f"rule set {rs.source}: [escalation.minutes] {severity!r} is not a severity "
                               f"({', '.join(derived.SEVERITIES)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RuleSetError(f"rule set {rs.source}: [escalation.minutes] {severity} must be a number of minutes "
                               f"above 0, not {value!r}")
        out[severity] = int(float(value) * 60_000)
    return out


class EscalationStage:
    """The stage's mechanics over a table-like mapping ``table`` (alert id -> JSON-ready entry)."""

    def __init__(self, rs: RuleSet, table):
        self.rs = rs
        self.table = table
        self.limits = limits(rs)
        self.keep_ms = int(float(rs.sections.get("escalation", {}).get("keep_days", 7)) * DAY_MS)

    # ------------------------------------------------------------------ records
    def step(self, rec: dict) -> Step:
        kind = rec.get("_kind")
        if kind == "alert":
            return self._alert(rec)
        if kind == "disposition":
            return self._disposition(rec)
        if kind == "tick":
            return self._tick(int(rec["now"]))
        raise ValueError(f"escalation stage: unknown record kind {kind!r}")

    def _entry(self, alert_id: str) -> dict:
        got = self.table.get(alert_id)
        return dict(got) if got else {"acks": {}}

    def _alert(self, rec: dict) -> Step:
        """A version of an alert: the newest by emitted_at stands (a withdrawal read before the version it
        withdraws still withdraws it)."""
        step = Step()
        if rec["kind"] == KIND or not rec["must_act"]:
            return step
        e = self._entry(rec["alert_id"])
        at = int(rec["emitted_at"])
        if not derived.is_live(rec):
            e["withdrawn_at"] = max(at, int(e.get("withdrawn_at") or at))
        else:
            e["first"] = min(at, int(e.get("first") or at))
            e["raised_at"] = max(at, int(e.get("raised_at") or at))
            e.update({k: rec.get(k) for k in ("kind", "severity", "rule_id", "must_act", "inform", "summary",
                                              "port_code", "station_id", "subject", "conveyance_id", "occurred_at")})
            limit = self.limits.get(rec["severity"])
            e["due"] = e["first"] + limit if limit else None
        e["withdrawn"] = e.get("withdrawn_at") is not None and e["withdrawn_at"] >= int(e.get("raised_at") or 0)
        if e["withdrawn"] and e.get("escalation") and derived.is_live(e["escalation"]):
            step.outs.append(("derived_alert", self._withdraw(e, "the alert it escalated was withdrawn")))
        step.writes[rec["alert_id"]] = e
        return step

    def _disposition(self, rec: dict) -> Step:
        step = Step()
        e = self._entry(rec["alert_id"])
        region = rec.get("region") or "CC"
        at = int(rec["decided_at"])
        acks = dict(e.get("acks") or {})
        acks[region] = min(at, int(acks.get(region, at)))
        e["acks"] = acks
        esc = e.get("escalation")
        if esc and derived.is_live(esc) and not self._silent(e):
            step.outs.append(("derived_alert", self._withdraw(
                e, "every region it named acknowledged the alert in time (read later than the escalation)")))
        step.writes[rec["alert_id"]] = e
        return step

    def _tick(self, now: int) -> Step:
        step = Step()
        clock = max(now, int(self.table.get(CLOCK_KEY) or 0))
        step.writes[CLOCK_KEY] = clock
        for alert_id, e in list(self.table.items()):
            if alert_id == CLOCK_KEY or not e:
                continue
            due = e.get("due")
            last = max([int(v) for v in (e.get("acks") or {}).values()]
                       + [int(e[k]) for k in ("due", "raised_at", "withdrawn_at") if e.get(k) is not None] or [clock])
            if last + self.keep_ms < clock:
                step.writes[alert_id] = None             # kept long enough
                continue
            if due is None or due > clock or e.get("decided") or e.get("withdrawn"):
                continue
            silent = self._silent(e)
            e = dict(e, decided=True)           # once per alert: judged when its time ran out
            if silent:
                e["escalation"] = self._escalation(alert_id, e, silent)
                step.outs.append(("derived_alert", dict(e["escalation"])))
            step.writes[alert_id] = e
        return step

    # ------------------------------------------------------------------ the escalation alert
    @staticmethod
    def _silent(e: dict) -> list[str]:
        """The must-act regions with no disposition decided by the due time."""
        acks, due = e.get("acks") or {}, e.get("due")
        return [r for r in e.get("must_act") or [] if r not in acks or due is None or int(acks[r]) > due]

    def _escalation(self, alert_id: str, e: dict, silent: list[str]) -> dict:
        minutes = (e["due"] - e["first"]) / 60_000
        rec = derived.make(
            self.rs, RULE_ID, KIND, e["severity"], silent, derived.others(*silent), [alert_id],
            int(e.get("occurred_at") or e["due"]),
            f"{e['kind']} alert not acknowledged by {', '.join(silent)} within {minutes:g} min: {e.get('summary') or ''}"
            .strip(), subject=e.get("subject"), conveyance_id=e.get("conveyance_id"), port_code=e.get("port_code"),
            station_id=e.get("station_id"), key="escalation",
            details={"escalates": alert_id, "escalated_kind": e["kind"], "escalated_rule": e.get("rule_id"),
                     "silent_regions": ",".join(silent), "due_at": e["due"], "first_emitted_at": e["first"],
                     "limit_minutes": f"{minutes:g}"})
        rec.pop("emitted_at", None)
        return rec

    def _withdraw(self, e: dict, reason: str) -> dict:
        esc = derived.withdrawn(dict(e["escalation"]), reason)
        esc.pop("emitted_at", None)
        e["escalation"] = esc
        return dict(esc)


def _ms(value) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def forwarded(codec, raw: bytes) -> dict | None:
    """The stage's record of a framed DerivedAlert or AlertDisposition (None: nothing for the stage); another kind
    of record, or bytes that do not decode, raise (the worker dead-letters them)."""
    kind, rec = codec.decode(raw)
    if kind == "derived_alert":
        if rec["kind"] == KIND or not rec["must_act"]:
            return None
        out = {k: rec.get(k) for k in ("alert_id", "kind", "severity", "rule_id", "must_act", "inform", "summary",
                                       "port_code", "station_id", "subject", "conveyance_id", "status")}
        return {"_kind": "alert", **out, "status": out["status"] or derived.RAISED,
                "occurred_at": _ms(rec["occurred_at"]), "emitted_at": _ms(rec["emitted_at"])}
    if kind == "disposition":
        return {"_kind": "disposition", "alert_id": rec["alert_id"], "region": rec["region"], "outcome": rec["outcome"],
                "decided_at": _ms(rec["decided_at"])}
    raise ValueError(f"a {kind} record where derived alerts and dispositions are read")


def encode(rec: dict) -> bytes:
    return json.dumps(rec, separators=(",", ":"), sort_keys=True).encode()
