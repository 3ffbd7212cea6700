"""Heightened mode and broadcast.

A HEIGHTENED_MODE control event opens a window (event time) for some regions:
inside it trend and flow thresholds are multiplied by its multiplier, and
alerts of ``broadcast_min_severity`` or above from those regions go to all
regions. Outside any window, only the ``always_kinds`` (counter-terror,
public health) at ``min_severity`` or above are broadcast. Each alert is
broadcast once.
"""
from __future__ import annotations

from streams import derived


def multiplier(state: dict, region: str, at: int) -> float:
    """The lowest threshold multiplier of the windows covering (region, at); 1.0 outside any."""
    ms = [w["mult"] for w in state["windows"] if region in w["regions"] and w["start"] <= at < w["end"]]
    return min(ms) if ms else 1.0


class Heightened:
    def __init__(self, rs):
        self.rs = rs
        b = rs["broadcast"]
        self.always = set(b["always_kinds"])
        self.min_sev = b["min_severity"]
        self.hm_sev = rs["heightened_mode"]["broadcast_min_severity"]
        # windows, alerts and broadcasts are kept a day past the regional lateness and the allowed delay: a trend
        # or flow hour judged again for an event read late has the thresholds of the windows that covered it
        self.keep_ms = (rs.minutes_ms("event_time", "global_lateness_minutes") + rs.allowed_delay_ms()
                        + 86_400_000)

    @staticmethod
    def new_state() -> dict:
        return {"windows": [], "recent": [], "done": {}}

    def on_control(self, state: dict, ev: dict) -> list:
        if ev.get("kind") != "HEIGHTENED_MODE":
            return []
        if any(w["id"] == ev["event_id"] for w in state["windows"]):
            return []
        w = {"id": ev["event_id"], "regions": list(ev["regions"]), "start": ev["starts_at"], "end": ev["ends_at"],
             "mult": float(ev.get("threshold_multiplier") or 1.0), "reason": ev.get("reason", "")}
        state["windows"].append(w)
        hours = (w["end"] - w["start"]) / 3_600_000
        a = derived.make(
            self.rs, "heightened_mode", "HEIGHTENED_MODE", "HIGH", w["regions"], derived.others(*w["regions"]),
            [w["id"]], w["start"],
            f"heightened mode for {', '.join(w['regions'])} for {hours:.0f} h"
            + (f": {w['reason']}" if w["reason"] else ""),
            details={"reason": w["reason"], "threshold_multiplier": w["mult"], "ends_at": w["end"],
                     "issued_by": ev.get("issued_by", "")},
            published_at=ev.get("published_at"))
        outs = [("derived_alert", a)]
        # alerts read before the control event that fall inside its window
        for r in list(state["recent"]):
            outs += self._maybe_broadcast(state, r)
        return outs

    def on_alert(self, state: dict, ev: dict) -> list:
        if not derived.severity_at_least(ev.get("severity"), min(self.min_sev, self.hm_sev, key=derived.SEVERITIES.index)):
            return []
        if ev.get("status") in ("RESOLVED", "DISMISSED"):
            return []
        r = {"id": ev["event_id"], "region": ev["region"], "kind": ev["kind"], "severity": ev["severity"],
             "at": ev["occurred_at"], "subject": ev.get("subject"), "conveyance": ev.get("conveyance_id"),
             "port": ev.get("port_code"), "station": ev.get("station_id"), "pub": ev.get("published_at")}
        if not any(x["id"] == r["id"] for x in state["recent"]):
            state["recent"].append(r)
        return self._maybe_broadcast(state, r)

    def _maybe_broadcast(self, state: dict, r: dict) -> list:
        key = f"bc|{r['id']}"
        if key in state["done"]:
            return []
        always = r["kind"] in self.always and derived.severity_at_least(r["severity"], self.min_sev)
        window = (derived.severity_at_least(r["severity"], self.hm_sev)
                  and any(r["region"] in w["regions"] and w["start"] <= r["at"] < w["end"] for w in state["windows"]))
        if not (always or window):
            return []
        state["done"][key] = r["at"]
        a = derived.make(
            self.rs, "broadcast", "BROADCAST", r["severity"], derived.others(r["region"]), [r["region"]], [r["id"]],
            r["at"], f"{r['severity']} {r['kind']} at {r['station']} ({r['region']})"
            + ("" if always else " during heightened mode"),
            subject=r["subject"], conveyance_id=r["conveyance"], port_code=r["port"], station_id=r["station"],
            details={"alert_kind": r["kind"], "reason": "always" if always else "heightened_mode"},
            published_at=r["pub"])
        return [("derived_alert", a)]

    def prune(self, state: dict, now: int) -> None:
        state["recent"] = [r for r in state["recent"] if now - r["at"] <= self.keep_ms]
        state["windows"] = [w for w in state["windows"] if now - w["end"] <= self.keep_ms]
        state["done"] = {k: t for k, t in state["done"].items() if now - t <= self.keep_ms}
