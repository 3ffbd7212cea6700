"""Late uploads through a real `yrdbus worker`: a deadline that is already due when it is learned fires at once.

A station uploads a 144-hour transit entry days late, when the subject stage's watermark has long passed the
stay's deadline. The stay has no exit, so its overstay is due the moment the entry is read; it must not wait for
the watermark to rise again (on a quiet bus it may not rise for hours). The test waits for outcomes (the
watermark at its final value, the alert on alerts.derived), never for a fixed time.
"""
from __future__ import annotations

import time
import uuid

from kit.scripted import HOUR, Script, token
from schemas import topics
from schemas.codec import get_codec
from streams import ruleset
from streams.app import StreamsConfig, ensure_topics
from streams.evaluate import read_alerts_topic

from test_hostile_worker import _metrics
from test_streams_worker import publish, wait_for, workers  # noqa: F401  (workers: a fixture)


def test_a_transit_entry_uploaded_after_its_deadline_passed_raises_its_overstay_at_once(kafka, workers):
    from conftest import free_port

    prefix = f"l{uuid.uuid4().hex[:6]}."
    ensure_topics(StreamsConfig(kafka.bootstrap, prefix=prefix))
    now = int(time.time() * 1000)
    t0 = now - 10 * 24 * HOUR
    traveller = token("late-upload", prefix)
    # what the bus knows first: the traveller's later, ordinary entry at Hongqiao a week after the transit entry
    # (the same region's topic, so the same partitions as the late record: its arrival moves no watermark)
    first = Script(23)
    first.clearance("SHA", t0 + 7 * 24 * HOUR, traveller, "ENTRY", nationality="USA")
    publish(kafka.bootstrap, first.encoded(get_codec(), prefix))

    port = free_port()
    w = workers(prefix, prefix + "w", partitions=topics.DEFAULT_PARTITIONS, metrics_port=port)
    w.start()
    lateness = ruleset.default().minutes_ms("event_time", "lateness_minutes")
    final = (t0 + 7 * 24 * HOUR - lateness) / 1000
    wait_for(lambda: _metrics(port).get("wm:subjects", 0) >= final - 0.001, 90,
             "the subject stage's watermark at its final value", w, detail=lambda: dict(_metrics(port)))
    # the late upload: a transit entry at Pudong on day 0 (deadline day 6), no exit, read on day 7
    late = Script(29)
    entry = late.clearance("PVG", t0, traveller, "ENTRY", nationality="USA", basis="TRANSIT_144H", origin="USA",
                           lane="TRANSIT_144H")
    publish(kafka.bootstrap, late.encoded(get_codec(), prefix))

    def overstay():
        got = [a for a in read_alerts_topic(kafka.bootstrap, prefix + topics.DERIVED_ALERTS, 5)
               if a["kind"] == "TRANSIT_OVERSTAY"]
        return got or None

    alerts = wait_for(overstay, 60, "the overstay of the transit entry uploaded late", w)
    assert [(a["subject"], a["evidence"], a["occurred_at"]) for a in alerts] == [
        (traveller, [entry["event_id"]], t0 + 144 * HOUR)]
    # and the watermark did not move for it: the alert came from the entry itself, not from a rise
    assert abs(_metrics(port).get("wm:subjects", 0) - final) < 0.002
