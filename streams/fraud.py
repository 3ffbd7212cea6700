"""Document-fraud spread: one fraud pattern (document country, type, series, method)
seen in ``min_regions`` regions within ``window_days`` becomes a regional warning, once.

Judged on the regional watermark, like the trends: the warning names the first hit (in event time)
that completed the window, and which hit that is depends on every earlier hit having come in. Judged
as hits arrived, a restart or a second worker that reads one region's stream behind another's would
name another hit, or a second warning (the alert id is derived from the evidence)."""
from __future__ import annotations

from schemas.reference import REGIONS
from streams import derived

FIELDS = ("document_country", "document_type", "document_series", "fraud_method")


def pattern_of(ev: dict) -> str | None:
    values = [ev.get(f) for f in FIELDS]
    if any(v in (None, "") for v in values):
        return None
    return "/".join(str(v) for v in values)


class FraudSpread:
    def __init__(self, rs):
        self.rs = rs
        self.window_ms = rs.days_ms("fraud_spread", "window_days")
        self.min_regions = int(rs["fraud_spread"]["min_regions"])
        self.cooldown_ms = rs.days_ms("fraud_spread", "cooldown_days")
        self.delay_ms = rs.allowed_delay_ms()

    @staticmethod
    def new_state() -> dict:
        # due: pattern -> the earliest time of its hits not yet judged; judged: the last watermark judged at;
        # fires: pattern -> the warnings raised ({"at", "alert"}), kept for the cooldown; beyond_delay: hits read
        # later than the allowed delay (judged nothing again)
        return {"hits": {}, "fired": {}, "due": {}, "judged": None, "fires": {}, "beyond_delay": 0}

    def on_alert(self, state: dict, ev: dict) -> list:
        """Record a hit. It is judged once the watermark has passed it (``on_watermark``), when every hit
        before it has come in whatever order the regions' streams were read; a hit older than the watermark
        already judged at (a late one) has its pattern judged again at once from that hit on, within the
        allowed delay: the warnings are then those of the event-time order, and one it disproves is withdrawn."""
        pattern = pattern_of(ev)
        if pattern is None or ev.get("status") in ("RESOLVED", "DISMISSED"):
            return []
        hits = state["hits"].setdefault(pattern, [])
        if any(h["id"] == ev["event_id"] for h in hits):
            return []
        hits.append({"id": ev["event_id"], "region": ev["region"], "at": ev["occurred_at"],
                     "subject": ev.get("subject"), "pub": ev.get("published_at")})
        hits.sort(key=lambda h: (h["at"], h["id"]))
        judged = state.get("judged")
        if judged is not None and ev["occurred_at"] <= judged:
            if ev["occurred_at"] < judged - self.delay_ms:
                state["beyond_delay"] = state.get("beyond_delay", 0) + 1
                return []
            return self._rejudge(state, pattern, ev["occurred_at"], judged)
        due = state.setdefault("due", {})
        due[pattern] = min(due.get(pattern, ev["occurred_at"]), ev["occurred_at"])
        return []

    def on_watermark(self, state: dict, watermark: int) -> list:
        if state.get("judged") is not None and watermark < state["judged"]:
            return []
        state["judged"] = watermark
        due = state.setdefault("due", {})
        outs: list = []
        for pattern in sorted(p for p, at in due.items() if at <= watermark):
            outs += self._rejudge(state, pattern, due[pattern], watermark)
            later = [h["at"] for h in state["hits"].get(pattern, ()) if h["at"] > watermark]
            if later:
                due[pattern] = min(later)
            else:
                del due[pattern]
        return outs

    def _rejudge(self, state: dict, pattern: str, since: int, watermark: int) -> list:
        """The warnings of ``pattern`` completed by hits from ``since`` to ``watermark``, judged in event time
        after those raised before ``since`` (which the hits from ``since`` on cannot change); what differs from
        what was raised for those times before goes out: the new warnings, and the withdrawal of the others."""
        if pattern not in state.setdefault("fires", {}) and state["fired"].get(pattern) is not None:
            # a state kept before the warnings were: its last warning stands, judged on from it as before
            if state["fired"][pattern] >= since:
                return []
            state["fires"][pattern] = []
            last = state["fired"][pattern]
        else:
            last = None
        fires = state["fires"].get(pattern, [])
        kept = [f for f in fires if f["at"] < since]
        last = kept[-1]["at"] if kept else last
        hits = [h for h in state["hits"].get(pattern, ()) if h["at"] <= watermark]
        new: list = []
        for i, h in enumerate(hits):
            if h["at"] < since or (last is not None and h["at"] - last <= self.cooldown_ms):
                continue
            a = self._warning(pattern, hits[: i + 1], h)
            if a is not None:
                new.append({"at": h["at"], "alert": a})
                last = h["at"]
        before = {f["alert"]["alert_id"]: f["alert"] for f in fires if f["at"] >= since}
        after = {f["alert"]["alert_id"] for f in new}
        outs = [("derived_alert", derived.withdrawn(a, f"hits of {pattern} read late complete the window at "
                                                       f"another hit")) for i, a in before.items() if i not in after]
        outs += [("derived_alert", f["alert"]) for f in new if f["alert"]["alert_id"] not in before]
        if kept or new:
            state["fires"][pattern] = kept + new
            state["fired"][pattern] = (kept + new)[-1]["at"]
        else:
            state["fires"].pop(pattern, None)
            state["fired"].pop(pattern, None)
        return outs

    def _warning(self, pattern: str, hits: list, h: dict) -> dict | None:
        """The warning ``h`` completes (the hits before it in event time given), or None."""
        window = [x for x in hits if h["at"] - x["at"] <= self.window_ms]
        first_of_region: dict[str, dict] = {}
        for x in window:
            first_of_region.setdefault(x["region"], x)
        if len(first_of_region) < self.min_regions:
            return None
        evidence = sorted({*(x["id"] for x in first_of_region.values()), h["id"]})
        regions = [r for r in REGIONS if r in first_of_region]
        return derived.make(
            self.rs, "fraud_spread", "DOCUMENT_FRAUD_SPREAD", "HIGH", list(REGIONS), [], evidence, h["at"],
            f"document fraud pattern {pattern} seen in {', '.join(regions)} within "
            f"{self.window_ms // 86_400_000} days",
            subject=h["subject"], pattern=pattern,
            details={"regions": ",".join(regions), "hits": str(len(window))},
            published_at=h["pub"])

    def prune(self, state: dict, now: int) -> None:
        # hits are kept for the window past the allowed delay: a late hit is judged with those before it
        for p in list(state["hits"]):
            state["hits"][p] = [h for h in state["hits"][p] if now - h["at"] <= self.window_ms + self.delay_ms]
            if not state["hits"][p]:
                del state["hits"][p]
        # warnings are kept for the cooldown past the allowed delay: a pattern judged again from a late hit starts
        # from the warnings raised before it, and the cooldown of one raised before the delay may reach into it
        keep = max(self.window_ms, self.cooldown_ms) + self.delay_ms
        state["fired"] = {p: t for p, t in state["fired"].items() if now - t <= keep}
        fires = state.setdefault("fires", {})
        for p in list(fires):
            fires[p] = [f for f in fires[p] if now - f["at"] <= keep]
            if not fires[p]:
                del fires[p]
