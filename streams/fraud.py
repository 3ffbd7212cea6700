"""Document-fraud spread: one fraud pattern (document country, type, series, method)
seen in ``min_regions`` regions within ``window_days`` becomes a regional warning, once."""
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
        return {"hits": {}, "fired": {}}

    def on_alert(self, state: dict, ev: dict) -> list:
        pattern = pattern_of(ev)
        if pattern is None or ev.get("status") in ("RESOLVED", "DISMISSED"):
            return []
        hits = state["hits"].setdefault(pattern, [])
        if any(h["id"] == ev["event_id"] for h in hits):
            return []
        hits.append({"id": ev["event_id"], "region": ev["region"], "at": ev["occurred_at"],
                     "subject": ev.get("subject"), "pub": ev.get("published_at")})
        hits.sort(key=lambda h: (h["at"], h["id"]))
        fired = state["fired"].get(pattern)
        if fired is not None and ev["occurred_at"] - fired <= self.cooldown_ms:
            return []
        # the completing hit is the first one (in event time) at which the window holds enough regions,
        # so the alert is the same whatever order the hits were read in
        for i, h in enumerate(hits):
            window = [x for x in hits[: i + 1] if h["at"] - x["at"] <= self.window_ms]
            first_of_region: dict[str, dict] = {}
            for x in window:
                first_of_region.setdefault(x["region"], x)
            if len(first_of_region) >= self.min_regions and (fired is None or h["at"] - fired > self.cooldown_ms):
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
