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

    @staticmethod
    def new_state() -> dict:
        # due: pattern -> the earliest time of its hits not yet judged; judged: the last watermark judged at
        return {"hits": {}, "fired": {}, "due": {}, "judged": None}

    def on_alert(self, state: dict, ev: dict) -> list:
        """Record a hit. It is judged once the watermark has passed it (``on_watermark``), when every hit
        before it has come in whatever order the regions' streams were read; a hit older than the watermark
        already judged at (a late one) is judged at once."""
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
            return self._judge(state, pattern, judged)
        due = state.setdefault("due", {})
        due[pattern] = min(due.get(pattern, ev["occurred_at"]), ev["occurred_at"])
        return []

    def on_watermark(self, state: dict, watermark: int) -> list:
        state["judged"] = watermark
        due = state.setdefault("due", {})
        outs: list = []
        for pattern in sorted(p for p, at in due.items() if at <= watermark):
            outs += self._judge(state, pattern, watermark)
            later = [h["at"] for h in state["hits"].get(pattern, ()) if h["at"] > watermark]
            if later:
                due[pattern] = min(later)
            else:
                del due[pattern]
        return outs

    def _judge(self, state: dict, pattern: str, watermark: int) -> list:
        # the completing hit is the first one (in event time) at which the window holds enough regions
        hits = [h for h in state["hits"].get(pattern, ()) if h["at"] <= watermark]
        fired = state["fired"].get(pattern)
        for i, h in enumerate(hits):
            if fired is not None and h["at"] - fired <= self.cooldown_ms:
                continue
            window = [x for x in hits[: i + 1] if h["at"] - x["at"] <= self.window_ms]
            first_of_region: dict[str, dict] = {}
            for x in window:
                first_of_region.setdefault(x["region"], x)
            if len(first_of_region) >= self.min_regions:
                state["fired"][pattern] = h["at"]
                evidence = sorted({*(x["id"] for x in first_of_region.values()), h["id"]})
                regions = [r for r in REGIONS if r in first_of_region]
                a = derived.make(
                    self.rs, "fraud_spread", "DOCUMENT_FRAUD_SPREAD", "HIGH", list(REGIONS), [], evidence, h["at"],
                    f"document fraud pattern {pattern} seen in {', '.join(regions)} within "
                    f"{self.window_ms // 86_400_000} days",
                    subject=h["subject"], pattern=pattern,
                    details={"regions": ",".join(regions), "hits": str(len(window))},
                    published_at=h["pub"])
                return [("derived_alert", a)]
        return []

    def prune(self, state: dict, now: int) -> None:
        keep = max(self.window_ms, self.cooldown_ms)
        for p in list(state["hits"]):
            state["hits"][p] = [h for h in state["hits"][p] if now - h["at"] <= self.window_ms]
            if not state["hits"][p]:
                del state["hits"][p]
        state["fired"] = {p: t for p, t in state["fired"].items() if now - t <= keep}
