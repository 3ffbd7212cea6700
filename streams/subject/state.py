"""One subject's state, shared by its rules: recent crossings, the alerts raised (to withdraw them), risk factors.

The state is a plain, JSON-serialisable dict (the stage keeps it in a table):

- ``crossings``: the subject's recent clearances (at most ``MAX_CROSSINGS``, kept ``allowed_delay_hours`` plus
  the lateness): what a flag, refusal or transit entry read late is matched against;
- ``flags``, ``resolutions`` (cross_region_hit), ``refusals`` (port_shopping), ``stays`` (transit);
- ``raised``: alert id -> ``{"key", "alert", ...}``, the last version sent of each derived alert whose
  evidence is younger than the allowed delay: events read later may still disprove it, and its withdrawal is the
  same record with status WITHDRAWN;
- ``done``: rule key -> event time, what each rule has decided for good (the live alerts that left ``raised``);
- ``risk``: the traveller's risk factors.
"""
from __future__ import annotations

from streams import derived, risk

MAX_CROSSINGS = 10


def new_state() -> dict:
    return {"flags": [], "refusals": [], "crossings": [], "stays": [], "done": {}, "risk": []}


def is_durable(state: dict) -> bool:
    """Whether the state holds anything beyond recent crossings (worth a changelog write)."""
    return bool(state["flags"] or state["refusals"] or state["stays"] or state["done"] or state["risk"]
                or state.get("resolutions") or state.get("raised"))


def crossing(ev: dict) -> dict:
    return {"id": ev["event_id"], "region": ev["region"], "at": ev["occurred_at"], "port": ev["port_code"],
            "station": ev["station_id"], "direction": ev["direction"], "conveyance": ev.get("conveyance_id"),
            "pub": ev.get("published_at"), "dest": ev.get("destination_country")}


def add_crossing(state: dict, c: dict) -> None:
    if not any(x["id"] == c["id"] for x in state["crossings"]):
        state["crossings"].append(c)
        state["crossings"].sort(key=lambda x: (x["at"], x["id"]))
        del state["crossings"][:-MAX_CROSSINGS]


def in_order(items) -> list:
    return sorted(items, key=lambda x: (x["at"], x["id"]))


class Alerts:
    """The derived alerts of one subject's rules: raised once, withdrawn once, each with its risk factor."""

    def __init__(self, rs, keep_ms: int):
        self.rs = rs
        self.keep_ms = keep_ms
        self.weights = rs["risk"]["traveller"]
        self.horizon_ms = rs.days_ms("risk", "horizon_days")

    @staticmethod
    def of(state: dict, key: str) -> list[dict]:
        """The entries of ``raised`` made under rule key ``key`` (live or withdrawn)."""
        return [e for e in (state.get("raised") or {}).values() if e["key"] == key]

    @staticmethod
    def live(state: dict, key: str) -> list[dict]:
        return [e for e in Alerts.of(state, key) if derived.is_live(e["alert"])]

    @staticmethod
    def decided(state: dict, key: str) -> bool:
        """Decided for good: the alert raised under ``key`` is older than the allowed delay (or was raised before
        alerts were kept), whatever versions of others under it are still kept."""
        return key in state["done"]

    def raise_(self, state: dict, key: str, alert: dict, subject: str, **meta) -> list:
        """Send ``alert`` unless it is live already; a withdrawn one is raised again as a new version."""
        kept = state.setdefault("raised", {})
        entry = kept.get(alert["alert_id"])
        if entry is not None and derived.is_live(entry["alert"]):
            return []
        kept[alert["alert_id"]] = {"key": key, "alert": alert, **meta}
        return [("derived_alert", alert)] + self.risk(state, subject, alert["kind"].lower(), alert["alert_id"],
                                                      alert["occurred_at"], alert["must_act"][0])

    def withdraw(self, state: dict, entry: dict, reason: str, subject: str, at: int) -> list:
        """Send the version of a live alert that withdraws it, and drop its risk factor."""
        if not derived.is_live(entry["alert"]):
            return []
        entry["alert"] = derived.withdrawn(entry["alert"], reason)
        a = entry["alert"]
        outs: list = [("derived_alert", a)]
        if risk.remove_factor(state["risk"], a["kind"].lower(), a["alert_id"]):
            outs.append(("risk", risk.score_record(self.rs, "TRAVELLER", subject, state["risk"], a["must_act"][0],
                                                   at)))
        return outs

    def risk(self, state, subject, name, evidence, at, region) -> list:
        weight = float(self.weights.get(name, 0))
        if not risk.add_factor(state["risk"], name, weight, evidence, at):
            return []
        risk.prune(state["risk"], at, self.horizon_ms)
        return [("risk", risk.score_record(self.rs, "TRAVELLER", subject, state["risk"], region, at))]

    def prune(self, state: dict, now: int) -> None:
        """Forget the alerts older than the allowed delay: they are final now. A live one leaves its rule key in
        ``done`` with its entry's ``done`` time (default: its event time)."""
        kept = state.get("raised")
        if not kept:
            state.pop("raised", None)
            return
        for i in [i for i, e in kept.items() if now - e["alert"]["occurred_at"] > self.keep_ms]:
            e = kept.pop(i)
            if derived.is_live(e["alert"]):
                t = e.get("done", e["alert"]["occurred_at"])
                state["done"][e["key"]] = max(state["done"].get(e["key"], t), t)
        if not kept:
            del state["raised"]
