"""Heightened mode and broadcast.

A HEIGHTENED_MODE control event opens a window (event time) for some regions:
inside it trend and flow thresholds are multiplied by its multiplier, and
alerts of ``broadcast_min_severity`` or above from those regions go to all
regions. Outside any window, only the ``always_kinds`` (counter-terror,
public health) at ``min_severity`` or above are broadcast. Each alert is
broadcast once.

The command centre changes a window (ends it early, or cancels it) with a later
control event naming it (``window_id``). The newest version by ``occurred_at``
stands whichever is read first: the announcement is sent again (same id; withdrawn
for a window ended before it began), broadcasts the window no longer covers are
withdrawn, and the regional stage judges the trend and flow hours of the changed
span again with the thresholds now in force (``RegionalRules.on_event``).
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

    def on_control(self, state: dict, ev: dict) -> tuple[list, tuple[int, int] | None]:
        """A control event: a new window, or a newer version of one (``window_id``: the window's first
        event_id), which replaces its regions, times and multiplier, e.g. ends it early. Versions are ordered by
        ``occurred_at`` (then event_id), so whichever is read first the newest stands. Returns the outputs (the
        window's announcement, broadcasts it now makes, withdrawals of broadcasts it no longer covers) and the
        event-time span whose thresholds changed (None: nothing changed)."""
        if ev.get("kind") != "HEIGHTENED_MODE":
            return [], None
        wid = ev.get("window_id") or ev["event_id"]
        new = {"id": wid, "version": ev["event_id"], "issued": int(ev.get("occurred_at") or ev["starts_at"]),
               "regions": list(ev["regions"]), "start": ev["starts_at"], "end": max(ev["ends_at"], ev["starts_at"]),
               "mult": float(ev.get("threshold_multiplier") or 1.0), "reason": ev.get("reason", ""),
               "issued_by": ev.get("issued_by", ""), "pub": ev.get("published_at")}
        old = next((w for w in state["windows"] if w["id"] == wid), None)
        if old is not None:
            if (new["issued"], new["version"]) <= (old.get("issued", 0), old.get("version", old["id"])):
                return [], None       # this version, or an older one, is already applied
            state["windows"].remove(old)
        state["windows"].append(new)
        span = _span(old, new)
        outs = [("derived_alert", self._announcement(new))]
        # alerts read before this version whose broadcast it makes or unmakes
        for r in list(state["recent"]):
            if span[0] <= r["at"] < span[1]:
                outs += self._maybe_broadcast(state, r) + self._maybe_unbroadcast(state, r, new)
        return outs, span

    def _announcement(self, w: dict) -> dict:
        """The window's HEIGHTENED_MODE alert, made of its newest version alone (the same id for every version):
        a window ended before it began is withdrawn."""
        hours = (w["end"] - w["start"]) / 3_600_000
        version = w.get("version", w["id"])      # (a window kept by an earlier release has one version)
        changed = version != w["id"]
        a = derived.make(
            self.rs, "heightened_mode", "HEIGHTENED_MODE", "HIGH", w["regions"], derived.others(*w["regions"]),
            [w["id"]], w["start"],
            (f"heightened mode for {', '.join(w['regions'])} changed by the command centre: {hours:.1f} h"
             if changed else f"heightened mode for {', '.join(w['regions'])} for {hours:.0f} h")
            + (f": {w['reason']}" if w["reason"] else ""),
            details={"reason": w["reason"], "threshold_multiplier": w["mult"], "ends_at": w["end"],
                     "issued_by": w.get("issued_by", ""), "window_id": w["id"],
                     "changed_by": version if changed else None, "changed_at": w.get("issued") if changed else None},
            published_at=w.get("pub"))
        if w["end"] <= w["start"]:
            return derived.withdrawn(a, f"heightened mode ended before it began (control {version})")
        return a

    def _maybe_unbroadcast(self, state: dict, r: dict, w: dict) -> list:
        """The withdrawal of ``r``'s broadcast when a changed window no longer covers it (and it is not one of
        the kinds broadcast always)."""
        key = f"bc|{r['id']}"
        if key not in state["done"] or self._reason(state, r) is not None:
            return []
        del state["done"][key]
        return [("derived_alert", derived.withdrawn(
            self._broadcast(r, "heightened_mode"),
            f"heightened mode for {', '.join(w['regions'])} changed: it no longer covers this alert's time "
            f"(control {w['version']})"))]

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

    def _reason(self, state: dict, r: dict) -> str | None:
        """Why ``r`` is broadcast now ("always" or "heightened_mode"), or None."""
        if r["kind"] in self.always and derived.severity_at_least(r["severity"], self.min_sev):
            return "always"
        if derived.severity_at_least(r["severity"], self.hm_sev) and any(
                r["region"] in w["regions"] and w["start"] <= r["at"] < w["end"] for w in state["windows"]):
            return "heightened_mode"
        return None

    def _maybe_broadcast(self, state: dict, r: dict) -> list:
        key = f"bc|{r['id']}"
        if key in state["done"]:
            return []
        reason = self._reason(state, r)
        if reason is None:
            return []
        state["done"][key] = r["at"]
        return [("derived_alert", self._broadcast(r, reason))]

    def _broadcast(self, r: dict, reason: str) -> dict:
        always = reason == "always"
        return derived.make(
            self.rs, "broadcast", "BROADCAST", r["severity"], derived.others(r["region"]), [r["region"]], [r["id"]],
            r["at"], f"{r['severity']} {r['kind']} at {r['station']} ({r['region']})"
            + ("" if always else " during heightened mode"),
            subject=r["subject"], conveyance_id=r["conveyance"], port_code=r["port"], station_id=r["station"],
            details={"alert_kind": r["kind"], "reason": reason},
            published_at=r["pub"])

    def prune(self, state: dict, now: int) -> None:
        state["recent"] = [r for r in state["recent"] if now - r["at"] <= self.keep_ms]
        state["windows"] = [w for w in state["windows"] if now - w["end"] <= self.keep_ms]
        state["done"] = {k: t for k, t in state["done"].items() if now - t <= self.keep_ms}


def _span(old: dict | None, new: dict) -> tuple[int, int]:
    """The event-time span where a window's new version may set other thresholds than its old one: the whole
    of both when the regions or the multiplier changed, else the times between their starts and their ends."""
    if old is None:
        return new["start"], new["end"]
    if old["regions"] != new["regions"] or old["mult"] != new["mult"]:
        return min(old["start"], new["start"]), max(old["end"], new["end"])
    lo = min(old["start"], new["start"]) if old["start"] != new["start"] else min(old["end"], new["end"])
    hi = max(old["end"], new["end"]) if old["end"] != new["end"] else max(old["start"], new["start"])
    return lo, max(lo, hi)
