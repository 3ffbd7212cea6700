"""Passenger flow: clearances counted per port and hour, judged against the
port's hour-of-week expectation; a surge raises a support request to the
neighbouring regions.

Expectation (``schemas/reference/flow_profile.json``)::

    annual_crossings x region share_of_crossings x port share_of_region / 8760
      x hour_of_day[kind][local hour] x day_of_week[local weekday, Monday first]

multiplied by a scale: the median over all ports of observed/expected in the
last ``scale_hours``, so a traffic source running at a fraction of the real
volume is judged against its own level (one port surging barely moves a median).

Counting is split in two: ``FlowCounter`` runs where the clearances are (the
subject stage, one state per partition) and sends per-(port, hour, partition)
partial counts; ``FlowSurge`` runs on the single-partition stage, keeps the
partials keyed by partition (a resent partial replaces, never adds) and judges
each hour once the watermark is ``grace_minutes`` past its end.
"""
from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timezone

from schemas.reference import neighbours, ports as reference_ports, regions as reference_regions
from streams import derived, heightened
from streams.poisson import upper_tail

HOUR = 3_600_000
FLAT = {"hour_of_day": {k: [1.0] * 24 for k in ("AIR", "SEA", "RIVER")}, "day_of_week": [1.0] * 7,
        "annual_crossings": 56_818_000}


class FlowCounter:
    """Per-partition clearance counts per (port, hour); partials go out when the watermark passes the hour.

    An hour is complete in a partition only when every source partition that feeds it has moved past the
    hour: the re-key step reads its sources a fetch at a time, so while a backlog is read one source can be
    hours ahead of another in the same subject partition. So the counter keeps each source's largest event
    time (``source`` given to ``on_clearance``: topic and partition) and its watermark is the slowest
    source's, less the lateness; a source silent for ``flow_idle_seconds`` of wall-clock time stops holding
    it back, as in ``streams.event_time``, unless the worker still has records of it to read (``touch``).
    Without sources it is the watermark passed in (the subject stage passes the partition's largest event
    time less the lateness: the sources of alerts and cases, which hold the stage's own watermark, count no
    clearances).
    """

    def __init__(self, rs, partitions: int = 1, clock=time.monotonic):
        self.lateness_ms = rs.minutes_ms("event_time", "lateness_minutes")
        self.idle_s = float(rs["event_time"].get("flow_idle_seconds", rs["event_time"]["idle_partition_seconds"]))
        self.keep_ms = self.lateness_ms + 6 * HOUR
        self.partitions = partitions
        self._clock = clock
        self._started = clock()
        self._seen: dict[tuple, float] = {}   # (partition, source) -> wall clock of its last clearance

    @staticmethod
    def new_state() -> dict:
        return {"counts": {}, "sent": {}, "progress": None, "sources": {}}

    def watermark(self, state: dict, watermark: int, partition: int) -> int:
        """The partition's flow watermark: ``watermark``, held back by the slowest source still active."""
        sources = state.get("sources") or {}
        now = self._clock()
        active = [t for src, t in sources.items() if now - self._seen.get((partition, src), self._started) < self.idle_s]
        return min(watermark, min(active) - self.lateness_ms) if active else watermark

    def touch(self, partition: int, sources) -> None:
        """Sources whose records are still to be read (a backlog the re-key step has not reached): silent,
        but not idle."""
        now = self._clock()
        for src in sources:
            self._seen[(partition, src)] = now

    def on_clearance(self, state: dict, ev: dict, partition: int, watermark: int, source: str | None = None) -> list:
        if source is not None:
            sources = state.setdefault("sources", {})
            if ev["occurred_at"] > sources.get(source, -(1 << 62)):
                sources[source] = ev["occurred_at"]
            self._seen[(partition, source)] = self._clock()
        hour = ev["occurred_at"] // HOUR
        key = f"{ev['port_code']}|{hour}"
        state["counts"][key] = state["counts"].get(key, 0) + 1
        if key in state["sent"]:          # a late clearance of an hour already sent: resend its new total
            return [self._partial(key, state["counts"][key], partition)]
        return []

    def on_watermark(self, state: dict, watermark: int, partition: int) -> list:
        watermark = self.watermark(state, watermark, partition)
        outs = []
        for key, n in state["counts"].items():
            hour = int(key.rsplit("|", 1)[1])
            if (hour + 1) * HOUR <= watermark and key not in state["sent"]:
                state["sent"][key] = True
                outs.append(self._partial(key, n, partition))
        # "this partition has sent every hour up to here": the judge waits for all partitions' progress,
        # not for the regional stage's own watermark, which runs ahead of the busy subject stage
        done = watermark // HOUR - 1
        if state.get("progress") is None or done > state["progress"]:
            state["progress"] = done
            outs.append({"_kind": "flow_partial", "port": "", "hour": done, "partition": partition, "count": 0,
                         "progress": True, "partitions": self.partitions, "occurred_at": (done + 1) * HOUR - 1})
        for key in [k for k in state["counts"] if watermark - (int(k.rsplit("|", 1)[1]) + 1) * HOUR > self.keep_ms]:
            del state["counts"][key]
            state["sent"].pop(key, None)
        return outs

    @staticmethod
    def _partial(key: str, n: int, partition: int) -> dict:
        port, hour = key.rsplit("|", 1)
        return {"_kind": "flow_partial", "port": port, "hour": int(hour), "partition": partition, "count": n,
                "occurred_at": (int(hour) + 1) * HOUR - 1}


class FlowSurge:
    def __init__(self, rs):
        self.rs = rs
        f = rs["flow_surge"]
        self.profile = rs.flow_profile or FLAT
        self.offset_ms = int(float(f["utc_offset_hours"]) * HOUR)
        self.scale_h = int(f["scale_hours"])
        self.warmup_h = int(f["warmup_hours"])
        self.min_ratio = float(f["min_ratio"])
        self.min_count = float(f["min_count"])
        self.alpha = float(f["alpha"])
        self.consecutive = int(f["consecutive_hours"])
        self.grace_ms = rs.minutes_ms("flow_surge", "grace_minutes")
        self.stall_ms = rs.hours_ms("flow_surge", "stall_hours")
        self.scale_min_ports = int(f["scale_min_ports"])
        self.cooldown_ms = rs.hours_ms("flow_surge", "cooldown_hours")
        hm = rs["heightened_mode"]
        self.ratio_floor = float(hm["min_ratio_floor"])
        self.count_floor = float(hm["min_count_floor"])
        self.ports = reference_ports()
        self.regions = reference_regions()

    @staticmethod
    def new_state() -> dict:
        return {"partials": {}, "first_hour": None, "judged": None, "history": {}, "run": {}, "fired": {},
                "progress": {}}

    def expected(self, port_code: str, hour: int) -> float:
        """Expected clearances at a port in one UTC hour, before scaling."""
        port = self.ports.get(port_code)
        if port is None:
            return 0.0
        local = datetime.fromtimestamp((hour * HOUR + self.offset_ms) / 1000, tz=timezone.utc)
        p = self.profile
        base = (float(p["annual_crossings"]) * float(self.regions[port.region]["share_of_crossings"])
                * float(port.share_of_region) / 8760.0)
        return base * float(p["hour_of_day"][port.kind][local.hour]) * float(p["day_of_week"][local.weekday()])

    def on_partial(self, state: dict, ev: dict) -> None:
        if ev.get("progress"):
            part = str(ev["partition"])
            state.setdefault("progress", {})[part] = max(ev["hour"], state["progress"].get(part, ev["hour"]))
            state["partitions"] = max(int(ev.get("partitions") or 1), state.get("partitions") or 1)
            return
        key = f"{ev['port']}|{ev['hour']}"
        state["partials"].setdefault(key, {})[str(ev["partition"])] = int(ev["count"])
        if state["first_hour"] is None or ev["hour"] < state["first_hour"]:
            state["first_hour"] = ev["hour"]

    def on_watermark(self, state: dict, watermark: int, hm_state: dict) -> list:
        if state["first_hour"] is None:
            return []
        # an hour is judged once every partition that counts clearances has sent it; a partition that
        # lags stall_hours behind the most advanced one no longer holds the judge back. Without any
        # progress report (input that is not the subject stage's) the stage's own watermark decides.
        progress = state.get("progress") or {}
        if progress:
            ahead = max(progress.values())
            last = ahead - self.stall_ms // HOUR
            if len(progress) >= (state.get("partitions") or 1):
                last = max(last, min(progress.values()))
        else:
            last = (watermark - self.grace_ms) // HOUR - 1
        start = state["first_hour"] if state["judged"] is None else state["judged"] + 1
        outs: list = []
        for hour in range(max(start, last - 24 * 14), last + 1):
            outs += self._judge(state, hour, hm_state)
            state["judged"] = hour
        return outs

    def _scale(self, state: dict) -> float | None:
        ratios = []
        for port, hist in state["history"].items():
            obs = sum(v[0] for v in hist.values())
            exp = sum(v[1] for v in hist.values())
            if exp > 0 and obs > 0:
                ratios.append(obs / exp)
        if len(ratios) < self.scale_min_ports:
            return None
        ratios.sort()
        mid = len(ratios) // 2
        return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2

    def _judge(self, state: dict, hour: int, hm_state: dict) -> list:
        outs: list = []
        scale = self._scale(state)
        end = (hour + 1) * HOUR
        counts = {code: sum(state["partials"].pop(f"{code}|{hour}", {}).values()) for code in self.ports}
        for hist in state["history"].values():
            for h in [h for h in hist if int(h) <= hour - self.scale_h]:
                del hist[h]
        if not any(counts.values()):
            # an hour without any traffic at all is a gap in the input (before it started, a stop), not a
            # fall in flow: it neither feeds the scale nor counts as history
            return outs
        state["active_hours"] = state.get("active_hours", 0) + 1
        history = state["active_hours"] - 1
        for code in sorted(self.ports):
            port = self.ports[code]
            observed = counts[code]
            raw = self.expected(code, hour)
            state["history"].setdefault(code, {})[str(hour)] = [observed, raw]
            if scale is None or history < self.warmup_h or raw <= 0:
                continue
            expected = raw * scale
            mult = heightened.multiplier(hm_state, port.region, end - 1)
            min_ratio = max(self.ratio_floor, self.min_ratio * mult) if mult < 1 else self.min_ratio * mult
            min_count = max(self.count_floor, self.min_count * mult) if mult < 1 else self.min_count * mult
            surging = (observed >= min_count and observed >= min_ratio * expected
                       and upper_tail(observed, expected) < (self.alpha ** mult if mult < 1 else self.alpha))
            signal = {
                "signal_id": hashlib.sha256(f"flow|{code}|{end}".encode()).hexdigest()[:32],
                "rule_id": "flow_surge", "rule_set_version": self.rs.version, "metric": "PASSENGER_FLOW",
                "region": port.region, "dimensions": {"port_code": code},
                "window_start": hour * HOUR, "window_end": end, "observed": float(observed),
                "expected": round(expected, 3), "score": round((observed - expected) / math.sqrt(max(expected, 1e-9)), 3),
                "rising": surging, "emitted_at": None,
            }
            if observed or surging:
                outs.append(("trend", signal))
            run = state["run"].setdefault(code, [])
            if not surging:
                run.clear()
                continue
            run.append(signal["signal_id"])
            fired = state["fired"].get(code)
            if len(run) >= self.consecutive and (fired is None or end - fired > self.cooldown_ms):
                state["fired"][code] = end
                a = derived.make(
                    self.rs, "flow_surge", "FLOW_SURGE_SUPPORT", "MEDIUM", neighbours(port.region), [port.region],
                    list(run), end - 1,
                    f"passenger flow at {port.name} ({code}) is {observed / expected:.1f}x its hour-of-week "
                    f"level for {len(run)} h: support requested from {', '.join(neighbours(port.region))}",
                    port_code=code, station_id=port.station_id,
                    details={"observed": observed, "expected": round(expected, 1), "hours": len(run),
                             "scale": round(scale, 4)})
                outs.append(("derived_alert", a))
            if state["fired"].get(code) == end:
                run[:] = run[-self.consecutive:]
        for key in [k for k in state["partials"] if int(k.rsplit("|", 1)[1]) <= hour - 48]:
            del state["partials"][key]
        state["fired"] = {c: t for c, t in state["fired"].items() if end - t <= self.cooldown_ms}
        return outs
