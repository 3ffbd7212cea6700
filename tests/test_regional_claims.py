"""The regional stage during a rebalance: an upstream partition no worker holds is not idle, however silent.

Without Kafka: the stage fed records and ticks as a worker would send them, on the clock of their timestamps.
"""
from __future__ import annotations

import json

import pytest

from kit.scripted import Script, _dt, token
from schemas import topics
from schemas.codec import get_codec
from schemas.eventtime import EventTimeBounds
from schemas.settings import get_settings
from streams import ruleset
from streams.decoding import PlainDecoder
from streams.flow import FlowSurge
from streams.regional_stage import FLOW_PARTIAL, RegionalStage
from streams.subject_stage import upstream_key

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

HOUR = 3_600_000
T0 = 1_496_620_800_000          # 2017-06-05T00:00Z
EPOCH_S = 1_700_000_000.0
SH, JS = topics.source("SH", "case"), topics.source("JS", "case")
UPSTREAMS = [upstream_key("subjects", 0), upstream_key(SH, 0), upstream_key(JS, 0)]
EVERYTHING = UPSTREAMS + [upstream_key(topics.source("JS", "clearance"), 0)]   # what the ticks name when all is held


class Feed:
    def __init__(self):
        self.rs = ruleset.default()
        self.codec = get_codec()
        bounds = EventTimeBounds.from_settings(get_settings())
        self.stage = RegionalStage(self.rs, PlainDecoder(self.codec, bounds), bounds, {})
        self.stage.assigned(UPSTREAMS)
        self.script = Script(3)
        self.now = 0.0
        self.lateness = self.rs.minutes_ms("event_time", "global_lateness_minutes")

    def case(self, port: str, hour: float) -> None:
        rec = self.script.case(port, int(T0 + hour * HOUR), "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("stowaway", port, hour)], ["VNM"])
        rec = {k: (_dt(v) if k in ("occurred_at", "published_at") else v) for k, v in rec.items()}
        topic = SH if self.script.ports[port].region == "SH" else JS
        headers = {"yrd-kind": "case", "yrd-source": topic, "yrd-source-partition": "0", "yrd-source-offset": "0"}
        self.write(self.stage.step(self.codec.encode("case", rec), headers, topic, EPOCH_S + self.now))

    def tick(self, held, busy=()) -> None:
        tick = {"_kind": "tick", "busy": sorted(busy)}
        if held is not None:
            tick["held"] = sorted(held)
        self.write(self.stage.step(json.dumps(tick).encode(), {"yrd-via": "tick"}, "streams.regional",
                                   EPOCH_S + self.now))

    def write(self, step) -> None:
        """The step's writes, as the table's changelog keeps them."""
        assert step.error is None, step.error
        for k, v in step.writes.items():
            if v is None:
                self.stage.table.pop(k, None)
            else:
                self.stage.table[k] = json.loads(json.dumps(v))

    def seconds(self, n: float, held, sh_from: float | None = None) -> None:
        """``n`` seconds of ticks every 2 s naming ``held``; with ``sh_from``, a Shanghai case an hour of event
        time apart each second (one region's backlog read on)."""
        for i in range(int(n)):
            self.now += 1.0
            if sh_from is not None:
                self.case("CNSHA-WGQ", sh_from + i)
            if i % 2 == 1:
                self.tick(held)

    def start(self, held=EVERYTHING) -> int:
        """A case of each region at hour 1, then a tick naming ``held``: Jiangsu's case partition's peak."""
        self.case("CNSHA-WGQ", 1)
        self.case("CNNTG", 1)
        self.tick(held)
        return self.stage.wm.peak(upstream_key(JS, 0))

    def watermark(self) -> int:
        return self.stage.wm.current()


@pytest.mark.parametrize("held_back_by", ["its own partition", "a clearance source"])
def test_an_upstream_nobody_holds_during_a_rebalance_holds_the_watermark_back_while_the_others_read_on(held_back_by):
    f = Feed()
    everything = EVERYTHING
    js_peak = f.start()
    # the Jiangsu case partition (or a clearance source, whose clearances may reach any subject partition) is
    # revoked from its worker and not yet taken up by another: the ticks of the workers name it no more, while
    # Shanghai's backlog is read on, far ahead in event time
    gone = upstream_key(JS, 0) if held_back_by == "its own partition" else everything[-1]
    f.seconds(60, [u for u in everything if u != gone], sh_from=2)
    assert f.watermark() <= js_peak - f.lateness, "a partition held by nobody was taken for idle"
    # taken up again, with nothing to read: it goes idle once silent for the idle time, and the watermark moves on
    f.seconds(30, everything, sh_from=62)
    assert f.watermark() > js_peak


def test_silence_of_a_held_partition_with_nothing_to_read_still_lets_the_watermark_move_on():
    f = Feed()
    js_peak = f.start()
    f.seconds(30, EVERYTHING, sh_from=2)
    assert f.watermark() > js_peak


def test_ticks_of_a_worker_that_names_nothing_it_holds_change_nothing():
    """A tick without ``held`` (a worker of an earlier version) claims nothing and unclaims nothing."""
    f = Feed()
    js_peak = f.start(held=None)
    f.seconds(30, None, sh_from=2)
    assert f.watermark() > js_peak


def test_after_a_restart_an_upstream_no_tick_names_is_held_back_though_no_tick_ever_named_it_here():
    """A worker SIGKILLed and started again joins its group while the dead one is still a member: what the group
    gives the dead one is read by nobody until its session times out. The restarted stage knows the upstreams
    from the maxima kept in its table; one of them no tick names is not taken for idle."""
    f = Feed()
    everything = EVERYTHING
    js_peak = f.start()
    table = f.stage.table
    assert table.get("watermark"), "the stage keeps its upstreams' largest event times"
    # started again on its table: the ticks of the new worker name all but the Jiangsu case partition
    f.stage = RegionalStage(f.rs, f.stage.decoder, f.stage.bounds, table)
    f.stage.assigned(UPSTREAMS)
    f.seconds(60, [u for u in everything if u != upstream_key(JS, 0)], sh_from=2)
    assert f.watermark() <= js_peak - f.lateness
    f.seconds(30, everything, sh_from=62)
    assert f.watermark() > js_peak


def test_a_flow_count_the_stage_already_holds_writes_nothing():
    """After a restart the subject stage sends every passed hour's count again (it does not know what it sent
    after its state was last written): one the regional stage holds already changes nothing and writes nothing
    to the changelog; a new count of the same hour is written, as that count's own key: the flow section's rest
    (days of history, some 50 KB) is not written again for it."""
    feed = Feed()
    partial = {"_kind": "flow_partial", "port": "PVG", "hour": T0 // HOUR, "partition": 0, "count": 7,
               "occurred_at": T0 + HOUR - 1}
    headers = {"yrd-via": upstream_key("subjects", 0)}
    key = f"{FLOW_PARTIAL}PVG|{T0 // HOUR}"

    def send(count: int):
        step = feed.stage.step(json.dumps({**partial, "count": count}).encode(), headers, "streams.regional",
                               EPOCH_S + feed.now)
        feed.write(step)
        return step

    first = send(7).writes
    assert first[key] == {"0": 7} and first["flow"]["first_hour"] == T0 // HOUR and "partials" not in first["flow"]
    again = send(7)
    assert key not in again.writes and "flow" not in again.writes and again.outs == []
    assert send(8).writes == {key: {"0": 8}}
    assert feed.stage.table[key] == {"0": 8}
    # started again on what it wrote: the count is the stage's again
    feed.stage = RegionalStage(feed.rs, feed.stage.decoder, feed.stage.bounds, feed.stage.table)
    feed.stage.assigned(UPSTREAMS)
    assert send(8).writes == {} and feed.stage.state["flow"]["partials"][f"PVG|{T0 // HOUR}"] == {"0": 8}


def test_a_flow_section_written_with_its_partials_inline_is_read_and_written_as_keys_of_their_own():
    """A regional table an older worker wrote holds the flow partials inside the flow section: the stage reads
    them, and its next write gives each its own key and the section without them."""
    feed = Feed()
    hour = T0 // HOUR
    older = {**FlowSurge.new_state(), "first_hour": hour,
             "partials": {f"PVG|{hour}": {"0": 7}, f"SHA|{hour}": {"1": 2}}}
    feed.stage.table["flow"] = older
    feed.stage.assigned(UPSTREAMS)
    partial = {"_kind": "flow_partial", "port": "PVG", "hour": hour, "partition": 0, "count": 8,
               "occurred_at": T0 + HOUR - 1}
    step = feed.stage.step(json.dumps(partial).encode(), {"yrd-via": upstream_key("subjects", 0)},
                           "streams.regional", EPOCH_S + feed.now)
    feed.write(step)
    assert step.writes[f"{FLOW_PARTIAL}PVG|{hour}"] == {"0": 8}
    assert step.writes[f"{FLOW_PARTIAL}SHA|{hour}"] == {"1": 2}
    assert "partials" not in step.writes["flow"] and step.writes["flow"]["first_hour"] == hour
    again = RegionalStage(feed.rs, feed.stage.decoder, feed.stage.bounds, feed.stage.table)
    again.assigned(UPSTREAMS)
    assert again._state()["flow"]["partials"] == {f"PVG|{hour}": {"0": 8}, f"SHA|{hour}": {"1": 2}}
