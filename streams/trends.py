"""Trends: case counts per region and dimension against their own baseline, and
systemic escalation when the same case type rises in several regions.

Counts are kept in hourly buckets. Each time the watermark passes the end of
an hour, every count with cases in the window ending there is tested: the
window's count against the rate of the hours before it (shrunk toward a prior
rate for counts seldom seen), with a minimum count, a minimum ratio and a
Poisson upper-tail probability. A TREND_RISING alert opens an episode per
(region, case type): further rising windows of the same episode raise nothing
until ``cooldown_hours`` pass without one.
"""
from __future__ import annotations

import hashlib
import math

from schemas.reference import REGIONS, neighbours
from streams import derived, heightened
from streams.poisson import upper_tail

HOUR = 3_600_000
MAX_EVIDENCE = 50


def dim_keys(ev: dict, dimensions) -> list[tuple[str, str]]:
    """(dimension key, case type) for each dimension the case counts in."""
    out = []
    for dims in dimensions:
        values: list[list[str]] = [[]]
        for d in dims:
            if d == "nationality":
                nats = sorted(set(ev.get("nationalities") or []))
                if not nats:
                    values = []
                    break
                values = [v + [f"nationality={n}"] for v in values for n in nats]
            else:
                val = ev.get(d)
                if val is None:
                    values = []
                    break
                values = [v + [f"{d}={val}"] for v in values]
        for v in values:
            out.append((f"{ev['region']}|{','.join(v)}", str(ev.get("case_type"))))
    return out


class Trends:
    def __init__(self, rs):
        self.rs = rs
        t = rs["trend"]
        self.dimensions = [list(d) for d in t["dimensions"]]
        self.count_stage = t["count_stage"]
        self.window_h = int(t["window_hours"])
        self.baseline_h = int(t["baseline_hours"])
        self.min_base_frac = float(t["min_baseline_fraction"])
        self.warmup_h = int(t["warmup_hours"])
        prior = t["prior_per_day"]
        self.prior_day = {k: float(v) for k, v in prior.items()} if isinstance(prior, dict) else {"default": float(prior)}
        self.prior_h = float(t["prior_hours"])
        self.min_count = float(t["min_count"])
        self.min_ratio = float(t["min_ratio"])
        self.alpha = float(t["alpha"])
        self.cooldown_ms = rs.hours_ms("trend", "cooldown_hours")
        s = rs["systemic_escalation"]
        self.sys_min = int(s["min_regions"])
        self.sys_window_ms = rs.hours_ms("systemic_escalation", "window_hours")
        self.sys_cooldown_ms = rs.hours_ms("systemic_escalation", "cooldown_hours")
        hm = rs["heightened_mode"]
        self.ratio_floor = float(hm["min_ratio_floor"])
        self.count_floor = float(hm["min_count_floor"])

    @staticmethod
    def new_state() -> dict:
        return {"first_hour": None, "judged": None, "buckets": {}, "ids": {}, "episodes": {}, "systemic": {}}

    # ------------------------------------------------------------------ counting
    def on_case(self, state: dict, ev: dict) -> None:
        if ev.get("stage") != self.count_stage:
            return
        hour = ev["occurred_at"] // HOUR
        if state["first_hour"] is None or hour < state["first_hour"]:
            state["first_hour"] = hour
        for key, _ in dim_keys(ev, self.dimensions):
            b = state["buckets"].setdefault(key, {})
            ids = state["ids"].setdefault(key, {})
            h = str(hour)
            hid = ids.setdefault(h, [])
            if ev["event_id"] in hid:
                continue
            hid.append(ev["event_id"])
            b[h] = b.get(h, 0) + 1
            ids[h] = hid

    def note_time(self, state: dict, at: int) -> None:
        """Any event's time starts the detector's history (so a count first seen late is judged fairly)."""
        hour = at // HOUR
        if state["first_hour"] is None or hour < state["first_hour"]:
            state["first_hour"] = hour

    # ------------------------------------------------------------------ judging
    def on_watermark(self, state: dict, watermark: int, hm_state: dict) -> list:
        if state["first_hour"] is None:
            return []
        last_closed = watermark // HOUR - 1          # the newest hour whose end the watermark has passed
        start = state["first_hour"] if state["judged"] is None else state["judged"] + 1
        outs: list = []
        for hour in range(max(start, last_closed - 24 * 14), last_closed + 1):
            outs += self._judge(state, hour, hm_state)
            state["judged"] = hour
        if state["judged"] is not None:
            self._prune(state, state["judged"])
        return outs

    def _sum(self, buckets: dict, lo: int, hi: int) -> int:
        if hi < lo:
            return 0
        if hi - lo < len(buckets):
            return sum(buckets.get(str(h), 0) for h in range(lo, hi + 1))
        return sum(n for h, n in buckets.items() if lo <= int(h) <= hi)

    def _judge(self, state: dict, hour: int, hm_state: dict) -> list:
        history = hour + 1 - state["first_hour"]
        if history < self.warmup_h:
            return []
        w = max(1, min(self.window_h, int(history * (1 - self.min_base_frac))))
        base_h = max(0, min(self.baseline_h, history - w))
        window_end = (hour + 1) * HOUR
        outs: list = []
        rising_groups: dict[str, list] = {}
        for key, buckets in state["buckets"].items():
            observed = self._sum(buckets, hour - w + 1, hour)
            if observed == 0:
                continue
            base = self._sum(buckets, hour - w - base_h + 1, hour - w)
            region, dims = key.split("|", 1)
            prior_h = self.prior_day.get(_case_type(dims), self.prior_day.get("default", 0.5)) / 24.0
            rate = (base + prior_h * self.prior_h) / (base_h + self.prior_h)
            expected = rate * w
            mult = heightened.multiplier(hm_state, region, window_end - 1)
            min_count = max(self.count_floor, self.min_count * mult) if mult < 1 else self.min_count * mult
            min_ratio = max(self.ratio_floor, self.min_ratio * mult) if mult < 1 else self.min_ratio * mult
            p = upper_tail(observed, expected)
            rising = observed >= min_count and observed >= min_ratio * expected and p < (self.alpha ** mult if mult < 1 else self.alpha)
            sd = math.sqrt(expected) if expected > 0 else 1.0
            signal = {
                "signal_id": _signal_id("trend", key, window_end),
                "rule_id": "trend", "rule_set_version": self.rs.version, "metric": "CASE_COUNT",
                "region": region, "dimensions": dict(kv.split("=", 1) for kv in dims.split(",")),
                "window_start": window_end - w * HOUR, "window_end": window_end,
                "observed": float(observed), "expected": round(expected, 4),
                "score": round((observed - expected) / sd, 4), "rising": rising, "emitted_at": None,
            }
            outs.append(("trend", signal))
            if rising:
                case_type = signal["dimensions"].get("case_type", "")
                rising_groups.setdefault(f"{region}|{case_type}", []).append((key, signal, buckets))
        for group in sorted(rising_groups):
            outs += self._episode(state, group, sorted(rising_groups[group], key=lambda x: x[0]), hour, w)
        return outs

    def _episode(self, state: dict, group: str, rising: list, hour: int, w: int) -> list:
        region, case_type = group.split("|", 1)
        window_end = (hour + 1) * HOUR
        ep = state["episodes"].get(group)
        if ep is not None and window_end - ep["last"] <= self.cooldown_ms:
            ep["last"] = window_end
            return []
        # the most general rising count names the alert (case type before case type and method ...)
        key, signal, _ = min(rising, key=lambda x: (len(x[1]["dimensions"]), x[0]))
        ids = state["ids"].get(key, {})
        evidence, latest = [], None
        for h in range(hour - w + 1, hour + 1):
            evidence += ids.get(str(h), [])
        evidence = sorted(evidence)[:MAX_EVIDENCE]
        occurred = window_end - 1
        a = derived.make(
            self.rs, "trend", "TREND_RISING", "MEDIUM", [region], neighbours(region), evidence, occurred,
            f"{case_type} cases rising in {region}: {signal['observed']:.0f} in {w} h against "
            f"{signal['expected']:.1f} expected",
            pattern=case_type,
            details={"dimensions": key.split("|", 1)[1], "observed": int(signal["observed"]),
                     "expected": signal["expected"], "window_hours": w, "signal_id": signal["signal_id"],
                     "rising_counts": ";".join(k.split("|", 1)[1] for k, _, _ in rising)},
            key=f"{group}|{window_end}")
        state["episodes"][group] = {"since": window_end, "last": window_end, "alert_id": a["alert_id"]}
        return [("derived_alert", a)] + self._systemic(state, case_type, region, a)

    def _systemic(self, state: dict, case_type: str, region: str, trend_alert: dict) -> list:
        s = state["systemic"].setdefault(case_type, {"rising": {}, "last": None})
        at = trend_alert["occurred_at"]
        s["rising"][region] = {"at": at, "alert": trend_alert["alert_id"]}
        recent = {r: v for r, v in s["rising"].items() if at - v["at"] <= self.sys_window_ms}
        if len(recent) < self.sys_min:
            return []
        if s["last"] is not None and at - s["last"] <= self.sys_cooldown_ms:
            return []
        s["last"] = at
        regions = [r for r in REGIONS if r in recent]
        a = derived.make(
            self.rs, "systemic_escalation", "SYSTEMIC_ESCALATION", "HIGH", list(REGIONS), [],
            [v["alert"] for v in recent.values()], at,
            f"{case_type} cases rising in {len(regions)} regions ({', '.join(regions)}): a regional pattern",
            pattern=case_type, details={"regions": ",".join(regions)})
        return [("derived_alert", a)]

    def _prune(self, state: dict, judged: int) -> None:
        oldest = judged - self.window_h - self.baseline_h
        for key in list(state["buckets"]):
            b = state["buckets"][key]
            for h in [h for h in b if int(h) < oldest]:
                del b[h]
            ids = state["ids"].get(key, {})
            for h in [h for h in ids if int(h) <= judged - self.window_h]:
                del ids[h]
            if not b:
                del state["buckets"][key]
                state["ids"].pop(key, None)
        now = (judged + 1) * HOUR
        state["episodes"] = {g: e for g, e in state["episodes"].items() if now - e["last"] <= self.cooldown_ms}
        for ct in list(state["systemic"]):
            s = state["systemic"][ct]
            s["rising"] = {r: v for r, v in s["rising"].items() if now - v["at"] <= self.sys_window_ms}
            if not s["rising"] and (s["last"] is None or now - s["last"] > self.sys_cooldown_ms):
                del state["systemic"][ct]


def _case_type(dims: str) -> str:
    for kv in dims.split(","):
        if kv.startswith("case_type="):
            return kv[len("case_type="):]
    return ""


def _signal_id(rule: str, key: str, window_end: int) -> str:
    return hashlib.sha256(f"{rule}|{key}|{window_end}".encode()).hexdigest()[:32]
