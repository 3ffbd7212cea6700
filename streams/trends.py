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
        self.delay_ms = rs.allowed_delay_ms()

    @staticmethod
    def new_state() -> dict:
        # rising: hour -> {count key: [signal id, observed, expected, window hours]} of the rising windows ending
        # at that hour's end; raised: alert id -> the TREND_RISING and SYSTEMIC_ESCALATION alerts raised, kept
        # with the rising windows for the allowed delay and the cooldowns so that an hour can be judged again
        return {"first_hour": None, "judged": None, "wm": None, "buckets": {}, "ids": {}, "rising": {}, "raised": {},
                "beyond_delay": 0}

    # ------------------------------------------------------------------ counting
    @staticmethod
    def _migrate(state: dict) -> None:
        """A state kept before hours were judged again (episodes and escalations, no rising windows nor alerts
        raised): its open episodes and recent escalations become the context of the hours judged next, so that
        an episode under way raises no second alert. They stand for alerts sent before: never withdrawn."""
        episodes, systemic = state.pop("episodes", None), state.pop("systemic", None)
        rising, raised = state.setdefault("rising", {}), state.setdefault("raised", {})
        for group, ep in (episodes or {}).items():
            region, case_type = group.split("|", 1)
            rising.setdefault(str(ep["last"] // HOUR - 1), {})[f"{region}|case_type={case_type}"] = [None, 0, 0, 1]
        for case_type, s in (systemic or {}).items():
            for region, v in s["rising"].items():
                raised.setdefault(v["alert"], {"alert_id": v["alert"], "kind": "TREND_RISING", "pattern": case_type,
                                               "must_act": [region], "occurred_at": v["at"], "kept": True})
            if s.get("last") is not None:
                key = f"kept-escalation|{case_type}|{s['last']}"
                raised[key] = {"alert_id": key, "kind": "SYSTEMIC_ESCALATION", "pattern": case_type,
                               "must_act": [], "occurred_at": s["last"], "kept": True}

    def on_case(self, state: dict, ev: dict, hm_state: dict | None = None) -> list:
        """Count a case. One read after its hour was judged (a late upload) has the windows it changes judged
        again at once, within the allowed delay; an older one is counted in ``beyond_delay`` and the baselines."""
        if ev.get("stage") != self.count_stage:
            return []
        hour = ev["occurred_at"] // HOUR
        if state["first_hour"] is None or hour < state["first_hour"]:
            state["first_hour"] = hour
        keys = []
        for key, _ in dim_keys(ev, self.dimensions):
            b = state["buckets"].setdefault(key, {})
            ids = state["ids"].setdefault(key, {})
            h = str(hour)
            hid = ids.setdefault(h, [])
            if ev["event_id"] in hid:
                continue
            hid.append(ev["event_id"])
            b[h] = b.get(h, 0) + 1
            keys.append(key)
        if not keys:
            return []
        return self._late(state, hour, ev["occurred_at"], hm_state, keys)

    def note_time(self, state: dict, at: int, hm_state: dict | None = None) -> list:
        """Any event's time starts the detector's history (so a count first seen late is judged fairly); one
        before the hours judged (within the allowed delay) has them judged again with the longer history."""
        hour = at // HOUR
        first = state["first_hour"]
        if first is not None and hour >= first:
            return []
        state["first_hour"] = hour
        return self._late(state, hour, at, hm_state, None, count=False)   # the event is counted where it counts

    def _late(self, state: dict, hour: int, at: int, hm_state: dict | None, keys, count: bool = True) -> list:
        """A count (of ``keys``; None: the history's start) that changes an hour the watermark has passed: judged
        again at once from that hour to the last one passed, within the allowed delay."""
        wm = state.get("wm")
        if wm is None or hour > wm // HOUR - 1:
            return []
        if at < wm - self.delay_ms:
            state["beyond_delay"] = state.get("beyond_delay", 0) + count
            return []
        hm_state = hm_state or {"windows": []}
        judged = state.get("judged")
        if judged is None:
            # the hours the watermark passed before there was anything to judge
            return self.on_watermark(state, wm, hm_state)
        return self._rejudge(state, hour, judged, hm_state, keys)

    def rejudge_since(self, state: dict, at: int, hm_state: dict) -> list:
        """Judge again the windows ending from ``at`` on (a heightened-mode window read after them changes their
        thresholds), within the allowed delay."""
        judged, wm = state.get("judged"), state.get("wm")
        if judged is None or wm is None:
            return []
        lo = max(at // HOUR, (wm - self.delay_ms) // HOUR + 1, state["first_hour"])
        return self._rejudge(state, lo, judged, hm_state, None) if lo <= judged else []

    # ------------------------------------------------------------------ judging
    def on_watermark(self, state: dict, watermark: int, hm_state: dict) -> list:
        state["wm"] = max(watermark, state.get("wm") or watermark)
        if state["first_hour"] is None:
            return []
        last_closed = watermark // HOUR - 1          # the newest hour whose end the watermark has passed
        start = state["first_hour"] if state["judged"] is None else state["judged"] + 1
        start = max(start, last_closed - 24 * 14)
        if start > last_closed:
            return []
        outs = self._rejudge(state, start, last_closed, hm_state, None)
        state["judged"] = last_closed
        self._prune(state, last_closed)
        return outs

    def _sum(self, buckets: dict, lo: int, hi: int) -> int:
        if hi < lo:
            return 0
        if hi - lo < len(buckets):
            return sum(buckets.get(str(h), 0) for h in range(lo, hi + 1))
        return sum(n for h, n in buckets.items() if lo <= int(h) <= hi)

    def _rejudge(self, state: dict, lo: int, hi: int, hm_state: dict, keys) -> list:
        """Judge the windows ending at hours ``lo`` to ``hi`` (of ``keys``, or of every count), then the alerts
        of those hours again: the trend signals of the windows judged, and what differs from the alerts raised
        for those hours before (new ones, and the withdrawal of those no longer raised)."""
        if "episodes" in state:
            self._migrate(state)
        outs: list = []
        rising = state.setdefault("rising", {})
        for hour in range(lo, hi + 1):
            h = str(hour)
            now = rising.get(h, {})
            if keys is None:
                now = {}
            else:
                now = {k: v for k, v in now.items() if k not in keys}
            for key in (sorted(state["buckets"]) if keys is None else keys):
                sig = self._signal(state, key, hour, hm_state)
                if sig is None:
                    continue
                outs.append(("trend", sig))
                if sig["rising"]:
                    now[key] = [sig["signal_id"], sig["observed"], sig["expected"],
                                (sig["window_end"] - sig["window_start"]) // HOUR]
            if now:
                rising[h] = now
            else:
                rising.pop(h, None)
        return outs + self._alerts(state, lo, hi)

    def _signal(self, state: dict, key: str, hour: int, hm_state: dict) -> dict | None:
        history = hour + 1 - state["first_hour"]
        if history < self.warmup_h:
            return None
        buckets = state["buckets"].get(key, {})
        w = max(1, min(self.window_h, int(history * (1 - self.min_base_frac))))
        base_h = max(0, min(self.baseline_h, history - w))
        window_end = (hour + 1) * HOUR
        observed = self._sum(buckets, hour - w + 1, hour)
        if observed == 0:
            return None
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
        return {
            "signal_id": _signal_id("trend", key, window_end),
            "rule_id": "trend", "rule_set_version": self.rs.version, "metric": "CASE_COUNT",
            "region": region, "dimensions": dict(kv.split("=", 1) for kv in dims.split(",")),
            "window_start": window_end - w * HOUR, "window_end": window_end,
            "observed": float(observed), "expected": round(expected, 4),
            "score": round((observed - expected) / sd, 4), "rising": rising, "emitted_at": None,
        }

    def _alerts(self, state: dict, lo: int, hi: int) -> list:
        """The alerts of the rising windows ending at hours ``lo`` to ``hi``, in event time after those of the
        hours before (kept): a TREND_RISING for a (region, case type) whose last rising window is more than the
        cooldown before, a SYSTEMIC_ESCALATION when its case type has risen in enough regions within the window.
        Sent: the ones not raised before for those hours, and the withdrawal of those raised and gone."""
        rising = state["rising"]
        raised = state.setdefault("raised", {})
        cool_h = self.cooldown_ms // HOUR
        last_rise: dict[str, int] = {}
        for h in sorted(int(x) for x in rising if lo - cool_h <= int(x) < lo):
            for key in rising[str(h)]:
                last_rise[_group(key)] = h
        # the escalation context: each case type's trend alerts and escalations raised before lo
        systemic: dict[str, dict] = {}
        for a in sorted(raised.values(), key=lambda a: (a["occurred_at"], a["alert_id"])):
            if a["occurred_at"] >= lo * HOUR:
                continue
            s = systemic.setdefault(a["pattern"], {"rising": {}, "last": None})
            if a["kind"] == "TREND_RISING":
                s["rising"][a["must_act"][0]] = {"at": a["occurred_at"], "alert": a["alert_id"]}
            else:
                s["last"] = a["occurred_at"]
        new: list[dict] = []
        for hour in range(lo, hi + 1):
            now = rising.get(str(hour), {})
            groups: dict[str, list] = {}
            for key in sorted(now):
                groups.setdefault(_group(key), []).append(key)
            for group in sorted(groups):
                prev = last_rise.get(group)
                last_rise[group] = hour
                real = [k for k in groups[group] if now[k][0] is not None]   # not an episode of a kept state
                if not real or (prev is not None and (hour - prev) * HOUR <= self.cooldown_ms):
                    continue
                a = self._trend_alert(state, group, real, now, hour)
                new.append(a)
                new += self._systemic(systemic, a)
        before = {i: a for i, a in raised.items() if lo * HOUR <= a["occurred_at"] < (hi + 1) * HOUR
                  and not a.get("kept")}
        after = {a["alert_id"] for a in new}
        outs = [("derived_alert", derived.withdrawn(a, "cases read late change the windows it was raised for"))
                for i, a in sorted(before.items()) if i not in after]
        for i in before:
            if i not in after:
                del raised[i]
        for a in new:
            if a["alert_id"] not in before:
                raised[a["alert_id"]] = a
                outs.append(("derived_alert", a))
        return outs

    def _trend_alert(self, state: dict, group: str, keys: list, now: dict, hour: int) -> dict:
        region, case_type = group.split("|", 1)
        window_end = (hour + 1) * HOUR
        # the most general rising count names the alert (case type before case type and method ...)
        key = min(keys, key=lambda k: (len(k.split("|", 1)[1].split(",")), k))
        signal_id, observed, expected, w = now[key]
        ids = state["ids"].get(key, {})
        evidence = []
        for h in range(hour - w + 1, hour + 1):
            evidence += ids.get(str(h), [])
        evidence = sorted(evidence)[:MAX_EVIDENCE]
        return derived.make(
            self.rs, "trend", "TREND_RISING", "MEDIUM", [region], neighbours(region), evidence, window_end - 1,
            f"{case_type} cases rising in {region}: {observed:.0f} in {w} h against {expected:.1f} expected",
            pattern=case_type,
            details={"dimensions": key.split("|", 1)[1], "observed": int(observed), "expected": expected,
                     "window_hours": w, "signal_id": signal_id,
                     "rising_counts": ";".join(k.split("|", 1)[1] for k in keys)},
            key=f"{group}|{window_end}")

    def _systemic(self, systemic: dict, trend_alert: dict) -> list:
        case_type, region = trend_alert["pattern"], trend_alert["must_act"][0]
        s = systemic.setdefault(case_type, {"rising": {}, "last": None})
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
        return [a]

    def _prune(self, state: dict, judged: int) -> None:
        """Counts and their case ids are kept for the window and baseline past the allowed delay, rising windows
        for the allowed delay and the episode cooldown, alerts for the allowed delay past the escalation's window and
        cooldown: what judging an hour again within the allowed delay needs."""
        delay_h = self.delay_ms // HOUR
        oldest = judged - self.window_h - self.baseline_h - delay_h
        for key in list(state["buckets"]):
            b = state["buckets"][key]
            for h in [h for h in b if int(h) < oldest]:
                del b[h]
            # the case ids as long as their counts: a case read again (an upstream re-reading from its commit)
            # must find its id while its hour is in any baseline, or it is counted twice
            ids = state["ids"].get(key, {})
            for h in [h for h in ids if int(h) < oldest]:
                del ids[h]
            if not b:
                del state["buckets"][key]
                state["ids"].pop(key, None)
        rising = state.setdefault("rising", {})
        for h in [h for h in rising if int(h) < judged - delay_h - self.cooldown_ms // HOUR - 1]:
            del rising[h]
        now = (judged + 1) * HOUR
        keep = self.delay_ms + max(self.cooldown_ms, self.sys_window_ms, self.sys_cooldown_ms) + HOUR
        raised = state.setdefault("raised", {})
        for i in [i for i, a in raised.items() if now - a["occurred_at"] > keep]:
            del raised[i]


def _group(key: str) -> str:
    """(region, case type) of a count key: the episode an alert stands for."""
    region, dims = key.split("|", 1)
    return f"{region}|{_case_type(dims)}"


def _case_type(dims: str) -> str:
    for kv in dims.split(","):
        if kv.startswith("case_type="):
            return kv[len("case_type="):]
    return ""


def _signal_id(rule: str, key: str, window_end: int) -> str:
    return hashlib.sha256(f"{rule}|{key}|{window_end}".encode()).hexdigest()[:32]
