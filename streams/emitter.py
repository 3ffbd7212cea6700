"""The stream layer's outputs on Kafka: derived alerts (to the bus and routed to each recipient region), trend
signals, risk scores, and dead letters."""
from __future__ import annotations

import asyncio
import logging
import time

import faust

from schemas import topics
from schemas.deadletter import headers_for
from streams import derived, metrics
from streams.events import for_avro

log = logging.getLogger("yrdbus.streams")


class Emitter:
    """Sends a stage's outputs ``[(kind, record)]`` with the app's producer; ``t(name)`` is a topic's name
    (with the deployment's prefix)."""

    def __init__(self, app: faust.App, codec, t):
        self.app, self.codec = app, codec
        self.out = {
            "derived": app.topic(t(topics.DERIVED_ALERTS), key_type=bytes, value_type=bytes),
            "trend": app.topic(t(topics.TRENDS), key_type=bytes, value_type=bytes),
            "risk": app.topic(t(topics.RISK_SCORES), key_type=bytes, value_type=bytes),
            **{f"to.{r}": app.topic(t(topics.routed_alerts(r)), key_type=bytes, value_type=bytes)
               for r in ("SH", "JS", "ZJ", "AH")},
        }
        self.dlq: dict[str, faust.TopicT] = {}

    async def emit(self, outs: list) -> None:
        """Send the outputs and wait until the broker has them: only then may the state that records them
        (an alert's "done" mark) go to the changelog, or a crash in between would lose the alert."""
        if not outs:
            return
        now = int(time.time() * 1000)
        futs = []
        for kind, rec in outs:
            rec["emitted_at"] = now
            metrics.labelled(metrics.OUTPUTS, kind).inc()
            if kind == "derived_alert":
                raw = self.codec.encode("derived_alert", for_avro(rec))
                key = rec["alert_id"].encode()
                futs.append(await self.out["derived"].send(key=key, value=raw))
                for region in derived.recipients(rec):
                    futs.append(await self.out[f"to.{region}"].send(key=key, value=raw))
                    metrics.labelled(metrics.DERIVED, rec["kind"], region).inc()
                metrics.labelled(metrics.EMIT_LAG, kind).observe(max(0.0, (now - rec["occurred_at"]) / 1000))
            elif kind == "trend":
                futs.append(await self.out["trend"].send(key=rec["signal_id"].encode(),
                                                         value=self.codec.encode("trend", for_avro(rec))))
            elif kind == "risk":
                key = f"{rec['subject_kind']}:{rec['subject']}".encode()
                futs.append(await self.out["risk"].send(key=key, value=self.codec.encode("risk", for_avro(rec))))
        await asyncio.gather(*futs)

    async def dead_letter(self, source: str, raw: bytes, key, error, partition=None, offset=None) -> None:
        """The record kept on ``source``'s dead-letter topic, its reason and origin in the headers."""
        name = topics.dead_letter(source)
        t = self.dlq.get(name) or self.dlq.setdefault(name, self.app.topic(name, key_type=bytes, value_type=bytes))
        await t.send(key=key, value=raw, headers=headers_for(source, error, partition=partition, offset=offset))
        metrics.labelled(metrics.DEAD, name, getattr(error, "reason", "error")).inc()
        log.warning("dead letter %s: %s", name, error)
