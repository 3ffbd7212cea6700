"""Detectors whose state is one subject's (traveller's): cross-region hit, port shopping,
144-hour transit tracking, and the traveller's risk score.

Pure: ``on_event(state, event, subject)`` and ``on_watermark(state, subject, watermark)``
take the subject's state (a plain, JSON-serialisable dict, changed in place) and
return outputs ``[(kind, record)]`` with kind ``derived_alert`` or ``risk``.
Times are epoch millis of event time; nothing here reads a clock.
"""
from __future__ import annotations

from schemas.reference import ports as reference_ports
from streams import derived, risk

MAX_CROSSINGS = 10


def new_state() -> dict:
    return {"flags": [], "refusals": [], "crossings": [], "stays": [], "done": {}, "risk": []}


def is_durable(state: dict) -> bool:
    """Whether the state holds anything beyond recent crossings (worth a changelog write)."""
    return bool(state["flags"] or state["refusals"] or state["stays"] or state["done"] or state["risk"]
                or state.get("resolutions"))


def next_deadline(state: dict) -> int | None:
    pending = [s["deadline"] for s in state["stays"] if s.get("exit") is None and not s.get("overstay")]
    return min(pending) if pending else None


class SubjectRules:
    def __init__(self, rs):
        self.rs = rs
        xr = rs["cross_region_hit"]
        self.flag_kinds = set(xr["flag_kinds"])
        self.active_ms = rs.days_ms("cross_region_hit", "active_days")
        self.shop_ms = rs.hours_ms("port_shopping", "window_hours")
        tr = rs["transit"]
        self.transit_ms = rs.hours_ms("transit", "hours")
        self.permitted = list(tr["permitted_regions"])
        self.transit_ports = set(tr["ports"])
        self.transit_nat = set(tr["nationalities"])
        self.transit_keep_ms = rs.days_ms("transit", "keep_days")
        self.lateness_ms = rs.minutes_ms("event_time", "lateness_minutes")
        self.crossing_keep_ms = self.shop_ms + self.lateness_ms
        self.weights = rs["risk"]["traveller"]
        self.horizon_ms = rs.days_ms("risk", "horizon_days")
        self.ports = reference_ports()

    # ------------------------------------------------------------------ entry points
    def on_event(self, state: dict, ev: dict, subject: str) -> list:
        kind = ev["_kind"]
        if kind == "clearance":
            outs = self._clearance(state, ev, subject)
        elif kind == "alert":
            outs = self._alert(state, ev, subject)
        elif kind == "case":
            outs = self._case(state, ev, subject)
        else:
            outs = []
        self._prune(state, ev["occurred_at"])
        return outs

    def on_watermark(self, state: dict, subject: str, watermark: int) -> list:
        outs: list = []
        for stay in state["stays"]:
            # an exit exactly at the deadline is in time: overstay only once the watermark is past it
            if stay.get("exit") is None and not stay.get("overstay") and watermark > stay["deadline"]:
                outs += self._overstay(state, stay, subject)
        self._prune(state, watermark)
        return outs

    # ------------------------------------------------------------------ events
    def _clearance(self, state, ev, subject) -> list:
        outs: list = []
        c = {"id": ev["event_id"], "region": ev["region"], "at": ev["occurred_at"], "port": ev["port_code"],
             "station": ev["station_id"], "direction": ev["direction"], "conveyance": ev.get("conveyance_id"),
             "pub": ev.get("published_at"), "dest": ev.get("destination_country")}
        if not any(x["id"] == c["id"] for x in state["crossings"]):
            state["crossings"].append(c)
            state["crossings"].sort(key=lambda x: (x["at"], x["id"]))
            del state["crossings"][:-MAX_CROSSINGS]
        if ev.get("decision") == "REFUSED":
            outs += self._refusal(state, ev, subject)
        for flag in state["flags"]:
            outs += self._cross_region(state, flag, c, subject)
        for ref in self._refusal_episodes(state):
            outs += self._port_shopping(state, ref, c, subject)
        outs += self._transit(state, ev, c, subject)
        return outs

    def _alert(self, state, ev, subject) -> list:
        outs: list = []
        kind, status = ev["kind"], ev.get("status", "RAISED")
        if status in ("RESOLVED", "DISMISSED"):
            # kept, not applied to the flags known now: a flag read after its resolution (another order of
            # arrival) must be as resolved as one read before it
            r = {"id": ev["event_id"], "kind": kind, "region": ev["region"], "at": ev["occurred_at"]}
            ends = state.setdefault("resolutions", [])
            if not any(x["id"] == r["id"] for x in ends):
                ends.append(r)
                ends.sort(key=lambda x: (x["at"], x["id"]))
            return outs
        if kind in self.flag_kinds:
            flag = {"id": ev["event_id"], "region": ev["region"], "kind": kind, "at": ev["occurred_at"],
                    "severity": ev["severity"], "station": ev["station_id"]}
            if not any(f["id"] == flag["id"] for f in state["flags"]):
                state["flags"].append(flag)
                # a crossing read before its (earlier) flag: out-of-order input
                for c in state["crossings"]:
                    outs += self._cross_region(state, flag, c, subject)
        if kind == "REFUSAL":
            outs += self._refusal(state, ev, subject)
        name = kind.lower() if kind.lower() in self.weights else risk.severity_factor(ev["severity"])
        outs += self._risk(state, subject, name, ev["event_id"], ev["occurred_at"], ev["region"])
        return outs

    def _case(self, state, ev, subject) -> list:
        if ev.get("stage") != "OPENED":
            return []
        return self._risk(state, subject, "case", ev["event_id"], ev["occurred_at"], ev["region"])

    # ------------------------------------------------------------------ cross-region hit
    @staticmethod
    def active_at(state, flag, t: int) -> bool:
        """A flag is active at event time ``t`` when it was raised at or before ``t`` and not resolved (or
        dismissed) between its raising and ``t``, whichever of the records was read first."""
        return flag["at"] <= t and not any(
            r["kind"] == flag["kind"] and r["region"] == flag["region"] and flag["at"] <= r["at"] <= t
            for r in state.get("resolutions") or ())

    def _cross_region(self, state, flag, c, subject) -> list:
        if c["region"] == flag["region"] or not (0 <= c["at"] - flag["at"] <= self.active_ms) \
                or not self.active_at(state, flag, c["at"]):
            return []
        key = f"xr|{flag['id']}|{c['region']}"
        if key in state["done"]:
            return []
        state["done"][key] = c["at"]
        a = derived.make(
            self.rs, "cross_region_hit", "CROSS_REGION_HIT", flag["severity"],
            [c["region"]], [flag["region"]], [flag["id"], c["id"]], c["at"],
            f"{flag['kind']} from {flag['region']} ({flag['station']}): subject crossed at {c['port']} in {c['region']}",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details={"flag_kind": flag["kind"], "flag_region": flag["region"], "flag_event": flag["id"],
                     "direction": c["direction"]},
            key=c["region"], published_at=c["pub"])
        return [("derived_alert", a)] + self._risk(state, subject, "cross_region_hit", a["alert_id"], c["at"], c["region"])

    # ------------------------------------------------------------------ port shopping
    def _refusal(self, state, ev, subject) -> list:
        r = {"id": ev["event_id"], "region": ev["region"], "at": ev["occurred_at"]}
        if any(x["id"] == r["id"] for x in state["refusals"]):
            return []
        state["refusals"].append(r)
        state["refusals"].sort(key=lambda x: (x["at"], x["id"]))
        outs = self._risk(state, subject, "refusal", r["id"], r["at"], r["region"])
        for ref in self._refusal_episodes(state):
            for c in state["crossings"]:
                outs += self._port_shopping(state, ref, c, subject)
        return outs

    def _refusal_episodes(self, state) -> list:
        """The first refusal of each region (by event time, then id): one episode per region."""
        first: dict[str, dict] = {}
        for r in state["refusals"]:
            first.setdefault(r["region"], r)
        return list(first.values())

    def _port_shopping(self, state, ref, c, subject) -> list:
        if c["region"] == ref["region"] or c["direction"] != "ENTRY" or not (0 <= c["at"] - ref["at"] <= self.shop_ms):
            return []
        # One alert per refusal episode and region of entry, whichever of the episode's refusals is read first: a
        # station's REFUSED clearance and its officer's REFUSAL alert a minute later are one refusal, read in
        # either order (two source topics). Refusals in a region within the window of the one alerted on are the
        # same episode; the alert's id names the region refused in, not which refusal came first, so every
        # order of reading gives the same alert.
        key = f"ps|{ref['region']}|{c['region']}"
        alerted = state["done"].get(key)
        if alerted is not None and abs(ref["at"] - alerted) <= self.shop_ms:
            return []
        state["done"][key] = ref["at"]
        hours = (c["at"] - ref["at"]) / 3_600_000
        a = derived.make(
            self.rs, "port_shopping", "PORT_SHOPPING", "HIGH", [c["region"]], [ref["region"]],
            [ref["id"], c["id"]], c["at"],
            f"refused in {ref['region']}, entry attempt at {c['port']} in {c['region']} {hours:.1f} h later",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details={"refused_in": ref["region"], "refusal_event": ref["id"], "hours_after_refusal": f"{hours:.2f}"},
            key=c["region"], published_at=c["pub"], id_evidence=[f"refused-in|{ref['region']}", c["id"]])
        return [("derived_alert", a)] + self._risk(state, subject, "port_shopping", a["alert_id"], c["at"], c["region"])

    # ------------------------------------------------------------------ transit (144 h)
    def _transit(self, state, ev, c, subject) -> list:
        outs: list = []
        if ev.get("entry_basis") == "TRANSIT_144H" and ev["direction"] == "ENTRY":
            if not any(s["entry"] == c["id"] for s in state["stays"]):
                stay = {
                    "entry": c["id"], "region": c["region"], "port": c["port"], "at": c["at"],
                    "deadline": c["at"] + self.transit_ms, "origin": ev.get("origin_country"),
                    "nationality": ev.get("nationality"), "exit": None, "overstay": False,
                    "eligible": ev.get("nationality") in self.transit_nat and c["port"] in self.transit_ports,
                }
                state["stays"].append(stay)
                state["stays"].sort(key=lambda s: (s["at"], s["entry"]))
                # the re-key step merges the regions' streams in its own order: the stay's later crossings may
                # have come first (an exit read from one region's topic before the entry from another's)
                for later in [x for x in state["crossings"] if x["at"] > c["at"]]:
                    outs += self._on_stay(state, stay, later, subject)
            return outs
        for stay in state["stays"]:
            outs += self._on_stay(state, stay, c, subject)
        return outs

    def _on_stay(self, state, stay, c, subject) -> list:
        """A crossing ``c`` judged against one transit stay: out of the area, its exit (late, to the origin)."""
        outs: list = []
        if c["at"] <= stay["at"] or c["id"] == stay["entry"]:
            return outs
        if stay.get("exit") is not None and c["at"] > stay["exit"]["at"]:
            return outs
        if c["region"] not in self.permitted:
            outs += self._out_of_area(state, stay, c, subject)
        if c["direction"] == "EXIT" and stay.get("exit") is None:
            stay["exit"] = {"id": c["id"], "at": c["at"], "region": c["region"]}
            if c["at"] > stay["deadline"]:
                outs += self._overstay(state, stay, subject)
            dest = c.get("dest")
            if dest and stay.get("origin") and dest == stay["origin"]:
                outs += self._exit_to_origin(state, stay, c, dest, subject)
        return outs

    def _stay_details(self, stay) -> dict:
        return {"entry_event": stay["entry"], "entry_region": stay["region"], "entry_port": stay["port"],
                "nationality": stay.get("nationality"), "origin_country": stay.get("origin"),
                "eligible": "yes" if stay.get("eligible") else "no"}

    def _overstay(self, state, stay, subject) -> list:
        stay["overstay"] = True
        key = f"ov|{stay['entry']}"
        if key in state["done"]:
            return []
        state["done"][key] = stay["deadline"]
        # evidence is the entry alone: the same alert whether the deadline passed on the
        # watermark or a late exit showed it
        a = derived.make(
            self.rs, "transit", "TRANSIT_OVERSTAY", "HIGH", [stay["region"]],
            [r for r in self.permitted if r != stay["region"]], [stay["entry"]], stay["deadline"],
            f"144-hour transit stay from {stay['port']} ({stay['region']}) ran past its deadline",
            subject=subject, port_code=stay["port"], details=self._stay_details(stay), key="overstay")
        return [("derived_alert", a)] + self._risk(state, subject, "transit_overstay", a["alert_id"],
                                                   stay["deadline"], stay["region"])

    def _exit_to_origin(self, state, stay, c, dest, subject) -> list:
        key = f"eo|{stay['entry']}"
        if key in state["done"]:
            return []
        state["done"][key] = c["at"]
        a = derived.make(
            self.rs, "transit", "TRANSIT_EXIT_TO_ORIGIN", "MEDIUM", [c["region"]], [stay["region"]],
            [stay["entry"], c["id"]], c["at"],
            f"144-hour transit traveller left from {c['port']} toward {dest}, the country they came from",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details={**self._stay_details(stay), "destination_country": dest}, key="exit_to_origin",
            published_at=c["pub"])
        return [("derived_alert", a)] + self._risk(state, subject, "transit_exit_to_origin", a["alert_id"],
                                                   c["at"], c["region"])

    def _out_of_area(self, state, stay, c, subject) -> list:
        key = f"oa|{stay['entry']}"
        if key in state["done"]:
            return []
        state["done"][key] = c["at"]
        a = derived.make(
            self.rs, "transit", "TRANSIT_OUT_OF_AREA", "HIGH", [c["region"]], [stay["region"]],
            [stay["entry"], c["id"]], c["at"],
            f"144-hour transit traveller (entered {stay['port']}) crossed at {c['port']} in {c['region']}, outside "
            f"{'/'.join(self.permitted)}",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details=self._stay_details(stay), key="out_of_area", published_at=c["pub"])
        return [("derived_alert", a)] + self._risk(state, subject, "transit_out_of_area", a["alert_id"],
                                                   c["at"], c["region"])

    # ------------------------------------------------------------------ risk
    def _risk(self, state, subject, name, evidence, at, region) -> list:
        weight = float(self.weights.get(name, 0))
        if not risk.add_factor(state["risk"], name, weight, evidence, at):
            return []
        risk.prune(state["risk"], at, self.horizon_ms)
        return [("risk", risk.score_record(self.rs, "TRAVELLER", subject, state["risk"], region, at))]

    # ------------------------------------------------------------------ housekeeping
    def _prune(self, state, now: int) -> None:
        if state.get("resolutions"):
            # a resolution matters to flags raised before it, which are kept active_days at most
            state["resolutions"] = [r for r in state["resolutions"] if now - r["at"] <= self.active_ms]
            if not state["resolutions"]:
                del state["resolutions"]
        if not (state["flags"] or state["refusals"] or state["stays"] or state["done"]):
            if state["crossings"] and now - state["crossings"][0]["at"] > self.crossing_keep_ms:
                state["crossings"] = [c for c in state["crossings"] if now - c["at"] <= self.crossing_keep_ms]
            return
        state["crossings"] = [c for c in state["crossings"] if now - c["at"] <= self.crossing_keep_ms]
        state["flags"] = [f for f in state["flags"] if now - f["at"] <= self.active_ms]
        state["refusals"] = [r for r in state["refusals"] if now - r["at"] <= self.shop_ms + self.lateness_ms]
        keep = []
        for s in state["stays"]:
            if s.get("exit") is not None and now - s["exit"]["at"] > self.lateness_ms:
                continue
            if now - s["deadline"] > self.transit_keep_ms:
                continue
            keep.append(s)
        state["stays"] = keep
        horizon = max(self.active_ms, self.transit_keep_ms + self.transit_ms)
        state["done"] = {k: t for k, t in state["done"].items() if now - t <= horizon}
