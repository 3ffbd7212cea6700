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
        # an hour's count is kept for the allowed delay, so that a clearance read that late resends its full count
        self.delay_ms = rs.allowed_delay_ms()
        self.keep_ms = self.lateness_ms + self.delay_ms
        self.partitions = partitions
        self._clock = clock
        self._started = clock()
        self._seen: dict[tuple, float] = {}   # (partition, source) -> wall clock of its last clearance

    @staticmethod
    def new_state() -> dict:
        return {"counts": {}, "sent": {}, "progress": None, "sources": {}, "beyond_delay": 0}

    @staticmethod
    def key_of(ev: dict) -> str:
        """The count a clearance goes to: ``<port>|<hour>``."""
        return f"{ev['port_code']}|{ev['occurred_at'] // HOUR}"

    @staticmethod
    def hour_of(key: str) -> int:
        return int(key.rsplit("|", 1)[1])

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

    def on_clearance(self, state: dict, ev: dict, partition: int, watermark: int, source: str | None = None,
                     offset: int | None = None) -> list:
        """Count a clearance read from ``source`` at ``offset``; one a count already holds (read again after a
        restart: the offsets committed lag the counts written) is not counted twice."""
        if source is not None:
            sources = state.setdefault("sources", {})
            if ev["occurred_at"] > sources.get(source, -(1 << 62)):
                sources[source] = ev["occurred_at"]
            self._seen[(partition, source)] = self._clock()
        hour = ev["occurred_at"] // HOUR
        progress = state.get("progress")
        if state.get("floor") is not None and (hour + 1) * HOUR < state["floor"]:
            # older than the counts kept: its hour is no longer judged again (counted, for the stage's metric)
            state["beyond_delay"] = state.get("beyond_delay", 0) + 1
            return []
        key = self.key_of(ev)
        if source is not None and offset is not None:
            upto = state.setdefault("upto", {}).setdefault(key, {})
            if offset <= upto.get(source, -1):
                return []
            upto[source] = offset
        state["counts"][key] = state["counts"].get(key, 0) + 1
        if key in state["sent"] or (progress is not None and hour <= progress):
            # a late clearance of an hour already passed: its partition's new total for the hour goes out at the
            # next tick (``flush``) or completed hour, whether or not the watermark moves again; one partial for
            # all the clearances of a late file read in between, not one each (it replaces the one sent before)
            state["sent"][key] = True
            state.setdefault("pending", {})[key] = True
        return []

    def flush(self, state: dict, partition: int) -> list:
        """The new totals of the hours already passed that late clearances have changed since the last flush."""
        pending = state.pop("pending", None) or {}
        return [self._partial(key, state["counts"][key], partition) for key in sorted(pending)
                if key in state["counts"]]

    def on_watermark(self, state: dict, watermark: int, partition: int, dropped: list | None = None) -> list:
        """The partials of the hours the watermark has passed, and the progress; ``dropped``: the keys of the
        counts dropped (older than the allowed delay)."""
        watermark = self.watermark(state, watermark, partition)
        done = watermark // HOUR - 1
        if state.get("progress") is not None and done <= state["progress"]:
            # no hour completed since the last call: every count of a passed hour has gone out (a late one at once,
            # ``on_clearance``), and the counts kept are looked at once an hour, not on every clearance
            return []
        outs = self.flush(state, partition)
        for key, n in state["counts"].items():
            hour = self.hour_of(key)
            if (hour + 1) * HOUR <= watermark and key not in state["sent"]:
                state["sent"][key] = True
                outs.append(self._partial(key, n, partition))
        # "this partition has sent every hour up to here": the judge waits for all partitions' progress,
        # not for the regional stage's own watermark, which runs ahead of the busy subject stage
        if state.get("progress") is None or done > state["progress"]:
            state["progress"] = done
            outs.append({"_kind": "flow_partial", "port": "", "hour": done, "partition": partition, "count": 0,
                         "progress": True, "partitions": self.partitions, "occurred_at": (done + 1) * HOUR - 1})
        # the counts of hours ending before the floor are dropped; a clearance of one of them sends nothing
        state["floor"] = max(state.get("floor") or watermark - self.keep_ms, watermark - self.keep_ms)
        for key in [k for k in state["counts"] if (self.hour_of(k) + 1) * HOUR < state["floor"]]:
            del state["counts"][key]
            state["sent"].pop(key, None)
            state.get("upto", {}).pop(key, None)
            if dropped is not None:
                dropped.append(key)
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
        self.delay_ms = rs.allowed_delay_ms()
        self._expected: dict = {}
        # the keys of ``partials`` set or deleted since the stage last wrote them: each is a table key of its own
        # (regional_stage.FLOW_PARTIAL), so a count read writes its own few bytes, not the section's 50 KB
        self.dirty: set[str] = set()
        hm = rs["heightened_mode"]
        self.ratio_floor = float(hm["min_ratio_floor"])
        self.count_floor = float(hm["min_count_floor"])
        self.ports = reference_ports()
        self.regions = reference_regions()

    @staticmethod
    def new_state() -> dict:
        # snaps: hour -> what judging it started with (the active hours, runs, last surges, scale), and raised:
        # alert id -> alert, both kept for the allowed delay so that an hour can be judged again
        return {"partials": {}, "first_hour": None, "judged": None, "history": {}, "run": {}, "fired": {},
                "progress": {}, "snaps": {}, "raised": {}, "wm": None, "beyond_delay": 0}

    def expected(self, port_code: str, hour: int) -> float:
        """Expected clearances at a port in one UTC hour, before scaling."""
        got = self._expected.get((port_code, hour))
        if got is None:
            if len(self._expected) > 100_000:
                self._expected.clear()
            got = self._expected[(port_code, hour)] = self._expect(port_code, hour)
        return got

    def _expect(self, port_code: str, hour: int) -> float:
        port = self.ports.get(port_code)
        if port is None:
            return 0.0
        local = datetime.fromtimestamp((hour * HOUR + self.offset_ms) / 1000, tz=timezone.utc)
        p = self.profile
        base = (float(p["annual_crossings"]) * float(self.regions[port.region]["share_of_crossings"])
                * float(port.share_of_region) / 8760.0)
        return base * float(p["hour_of_day"][port.kind][local.hour]) * float(p["day_of_week"][local.weekday()])

    #: whether the last partial ``on_partial`` read was the count already held (its state unchanged)
    unchanged = False
    #: whether it changed anything beyond ``partials`` (the rest of the section is written only then)
    meta_changed = False

    def on_partial(self, state: dict, ev: dict, hm_state: dict | None = None) -> list:
        """Keep a partition's count of a (port, hour), replacing what it sent before for them. A count of an hour
        already judged (a late clearance) has the hour and those after it judged again, within the allowed
        delay, at the stage's next tick or judging (``judge_late``: once for all the hours changed in between);
        an older one is kept and counted in ``beyond_delay``."""
        self.unchanged = False
        self.meta_changed = False
        if ev.get("progress"):
            self.meta_changed = True
            part = str(ev["partition"])
            state.setdefault("progress", {})[part] = max(ev["hour"], state["progress"].get(part, ev["hour"]))
            state["partitions"] = max(int(ev.get("partitions") or 1), state.get("partitions") or 1)
            # the hours every partition has now sent are judged at once, not when the watermark next rises
            return self._judge_due(state, hm_state or {"windows": []}) if state.get("wm") is not None else []
        key = f"{ev['port']}|{ev['hour']}"
        parts = state["partials"].get(key) or {}
        if parts.get(str(ev["partition"])) == int(ev["count"]):
            # the count it holds (a partition sends its passed hours' counts again after a restart): nothing
            # changes, and the stage writes nothing
            self.unchanged = True
            return []
        state["partials"][key] = parts
        parts[str(ev["partition"])] = int(ev["count"])
        self.dirty.add(key)
        first = state["first_hour"]
        if first is None or ev["hour"] < first:
            state["first_hour"] = ev["hour"]
            self.meta_changed = True
        judged = state.get("judged")
        if judged is None or ev["hour"] > judged:
            return []
        self.meta_changed = True
        if (ev["hour"] + 1) * HOUR - 1 < (state.get("wm") or 0) - self.delay_ms:
            state["beyond_delay"] = state.get("beyond_delay", 0) + 1
            return []
        # hours: those whose counts changed; first: the first hour before them (an hour before it was never judged)
        late = state.setdefault("late", {"hours": [], "first": first})
        if ev["hour"] not in late["hours"]:
            late["hours"] = sorted(late["hours"] + [ev["hour"]])
        return []

    def judge_late(self, state: dict, hm_state: dict) -> list:
        """Judge again, once, the hours whose counts changed after they were judged, and those after them."""
        late = state.pop("late", None)
        if not late or state.get("judged") is None:
            return []
        hours = [h for h in late["hours"] if h <= state["judged"]]
        return self._rejudge(state, hours[0], state["judged"], hm_state, late["first"], changed=set(hours)) \
            if hours else []

    def on_watermark(self, state: dict, watermark: int, hm_state: dict) -> list:
        state["wm"] = max(watermark, state.get("wm") or watermark)
        return self._judge_due(state, hm_state)

    def _judge_due(self, state: dict, hm_state: dict) -> list:
        watermark = state["wm"]
        if state["first_hour"] is None:
            return []
        # the hours changed late first: the hours judged next carry on from them
        late = self.judge_late(state, hm_state)
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
        start = max(start, last - 24 * 14)
        if start > last:
            return late
        outs = late + self._rejudge(state, start, last, hm_state, None)
        state["judged"] = last
        self._prune(state, last)
        return outs

    def _snapshot(self, state: dict) -> dict:
        """What judging an hour carries over to the next: the active hours so far, the runs and the last surges."""
        return {"active": state.get("active_hours", 0), "run": {c: list(r) for c, r in state["run"].items() if r},
                "fired": dict(state["fired"])}

    def rejudge_since(self, state: dict, at: int, until: int, hm_state: dict) -> list:
        """Judge again the hours from ``at`` on (a heightened-mode window read after them: its thresholds apply
        to the hours before ``until``), within the allowed delay."""
        late = self.judge_late(state, hm_state)
        judged = state.get("judged")
        if judged is None or state.get("wm") is None:
            return late
        lo = max(at // HOUR, (state["wm"] - self.delay_ms) // HOUR + 1, state["first_hour"] or 0)
        if lo > judged or str(lo) not in state.get("snaps", {}):
            return late
        return late + self._rejudge(state, lo, judged, hm_state, None, force=min(judged, (until - 1) // HOUR))

    def _rejudge(self, state: dict, lo: int, hi: int, hm_state: dict, first: int | None,
                 force: int | None = None, changed: set | None = None) -> list:
        """Judge hours ``lo`` to ``hi`` again from what judging ``lo`` started with (kept), or for the first time;
        ``changed``: the hours whose counts changed (``lo`` alone unless given). An hour whose counts, scale and
        carried state are as when it was last judged is passed over. Sent: the signals of the hours judged, the
        alerts not raised before for them and the withdrawal of those gone."""
        snaps = state.setdefault("snaps", {})
        live = self._snapshot(state)
        start = snaps.get(str(lo))
        if start is None:
            if state.get("judged") is not None and lo <= state["judged"] and not (first is not None and lo < first):
                # judged before hours were snapshotted (a state of the previous release): judged as it was
                state["beyond_delay"] = state.get("beyond_delay", 0) + 1
                return []
            start = live if state.get("judged") is None or lo > state["judged"] else {"active": 0, "run": {},
                                                                                       "fired": {}}
        self._restore(state, start)
        changed = changed or {lo}
        outs: list = []
        judged: set[int] = set()
        new: list = []
        cols, cols_last = None, None
        for hour in range(lo, hi + 1):
            pre = self._snapshot(state)
            kept = snaps.get(str(hour))
            if kept is not None and hour > lo and not any(hour - self.scale_h <= c < hour for c in changed):
                scale = kept["scale"]         # no hour it looks back to changed: the scale stays
            elif kept is not None and hour > lo:
                # hours judged before: their history is what it was, unless changed (written when judged again):
                # one pass for the scales of the hours up to the next changed one
                if cols is None or hour - 1 > cols_last:
                    cols_last = min(hi, hour + self.scale_h - 1)
                    cols = self._columns(state, hour - self.scale_h, cols_last)
                scale = self._scale(state, hour, cols)
            else:
                scale = self._scale(state, hour)
            if hour > max(lo, force or lo) and hour not in changed and kept is not None \
                    and kept["scale"] == scale and {**pre, "scale": scale} == kept:
                if hour > max(changed) + self.scale_h:   # (and past the hours forced)
                    self._restore(state, live)
                    break                 # nothing this hour on can differ from before
                nxt = snaps.get(str(hour + 1))
                self._restore(state, nxt if nxt is not None and hour < hi else live)
                continue
            if hour in changed:
                cols = None               # its history is written anew
            snaps[str(hour)] = {**pre, "scale": scale}
            judged.add(hour)
            for kind, rec in self._judge(state, hour, hm_state, scale):
                (new if kind == "derived_alert" else outs).append(rec if kind == "derived_alert" else (kind, rec))
        raised = state.setdefault("raised", {})
        before = {i: a for i, a in raised.items() if a["occurred_at"] // HOUR in judged}
        after = {a["alert_id"] for a in new}
        for i, a in sorted(before.items()):
            if i not in after:
                outs.append(("derived_alert", derived.withdrawn(a, "clearances counted late change the hours it "
                                                                   "was raised for")))
                del raised[i]
        for a in new:
            if a["alert_id"] not in before:
                raised[a["alert_id"]] = a
                outs.append(("derived_alert", a))
        return outs

    @staticmethod
    def _restore(state: dict, snap: dict) -> None:
        state["active_hours"] = snap["active"]
        state["run"] = {c: list(r) for c, r in snap["run"].items()}
        state["fired"] = dict(snap["fired"])

    def _scale(self, state: dict, hour: int, cols: tuple | None = None) -> float | None:
        """The median observed/expected ratio of the ports over the ``scale_hours`` before ``hour`` (from the
        history's ``_columns`` when given: several hours' scales at the cost of one)."""
        first, ports = cols if cols is not None else self._columns(state, hour - self.scale_h, hour - 1)
        i, j = max(0, hour - self.scale_h - first), hour - first
        ratios = []
        for obs_h, exp_h in ports:
            obs = sum(obs_h[i:j])
            exp = math.fsum(exp_h[i:j])       # correctly rounded: the same scale however it is worked out
            if exp > 0 and obs > 0:
                ratios.append(obs / exp)
        if len(ratios) < self.scale_min_ports:
            return None
        ratios.sort()
        mid = len(ratios) // 2
        return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2

    @staticmethod
    def _columns(state: dict, first: int, last: int) -> tuple:
        """Each port's observed and expected counts of hours ``first`` to ``last`` (0 where none)."""
        hours = [str(h) for h in range(first, last + 1)]
        ports = []
        for hist in state["history"].values():
            vals = [hist.get(h) or (0, 0.0) for h in hours]
            ports.append(([v[0] for v in vals], [v[1] for v in vals]))
        return first, ports

    def _judge(self, state: dict, hour: int, hm_state: dict, scale: float | None) -> list:
        outs: list = []
        end = (hour + 1) * HOUR
        counts = {code: sum(state["partials"].get(f"{code}|{hour}", {}).values()) for code in self.ports}
        for hist in state["history"].values():
            hist.pop(str(hour), None)
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
        state["fired"] = {c: t for c, t in state["fired"].items() if end - t <= self.cooldown_ms}
        return outs

    def _prune(self, state: dict, judged: int) -> None:
        """Counts, snapshots and alerts are kept for the allowed delay, history for the scale's hours before it."""
        oldest = judged - self.delay_ms // HOUR - 1
        for key in [k for k in state["partials"] if int(k.rsplit("|", 1)[1]) < oldest]:
            del state["partials"][key]
            self.dirty.add(key)
        for hist in state["history"].values():
            for h in [h for h in hist if int(h) < oldest - self.scale_h]:
                del hist[h]
        snaps = state.setdefault("snaps", {})
        for h in [h for h in snaps if int(h) < oldest]:
            del snaps[h]
        raised = state.setdefault("raised", {})
        for i in [i for i, a in raised.items() if a["occurred_at"] // HOUR < oldest]:
            del raised[i]
