"""Officers' dispositions of derived alerts: acknowledged, then settled (confirmed, false alarm, no action).

``POST /alerts/{alert_id}/dispositions`` with a region token records one on the bus
(topic ``dispositions``, Avro ``AlertDisposition``, keyed by the alert id); the sink stores it in
ClickHouse (``dispositions``). The rules:

- the alert must exist: the ledger reads every version of every derived alert from ``alerts.derived``,
  and each request is decided once that read has reached what the topics held when it came (404 else; 503
  when the ledger cannot catch up within 10 s);
- a token may dispose of an alert its regions must act on or are informed of (a command-centre token,
  scope ``all``, of any alert); a station-only token may not (403);
- each region acknowledges once and settles once: asking again for what is already recorded answers it
  again (200, nothing new on the bus), a different settlement of a settled alert is refused (409), and
  settling first records the acknowledgement with it; a withdrawn alert can be acknowledged, not settled;
- ``note`` is optional text of at most 500 characters without control characters.

A disposition's id is the same for the same alert, region and step, so a retried request stores one row.
"""
from __future__ import annotations

import asyncio
import logging
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from schemas import topics
from schemas.codec import get_codec
from schemas.errors import EventError
from schemas.reference import REGIONS

from connectors.gateway.access import TokenEntry
from connectors.gateway.control import Window

log = logging.getLogger("yrdbus.gateway.dispositions")

OUTCOMES = ("ACKNOWLEDGED", "CONFIRMED", "FALSE_ALARM", "NO_ACTION")
SETTLEMENTS = OUTCOMES[1:]
MAX_NOTE = 500
#: the namespace of disposition ids: uuid5 of "<alert_id>|<region or ALL>|<step>"
ID_NAMESPACE = uuid.UUID("5f0d7a52-3c1e-4b8e-9d7c-2a6b1f4e8c90")


class DispositionError(Exception):
    """A request the ledger refuses; ``status`` is the HTTP status, the message names the rule."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status = status
        self.error = error


@dataclass
class AlertFacts:
    """What the ledger keeps of an alert: its newest version's routing and standing."""

    must_act: list[str]
    inform: list[str]
    kind: str
    severity: str
    status: str
    emitted_at: datetime


@dataclass
class Ledger:
    """Every derived alert's routing and every disposition recorded, read from the bus; records new ones."""

    bootstrap: str
    prefix: str = ""
    kafka_options: dict = field(default_factory=dict)
    alerts: dict[str, AlertFacts] = field(default_factory=dict)
    #: heightened windows by window id and by their announcement's alert id, from the announcements' newest
    #: versions (``control.Window``)
    windows: dict = field(default_factory=dict)
    #: (alert_id, region or None, "ack" | "settle") -> the disposition record
    recorded: dict[tuple[str, str | None, str], dict] = field(default_factory=dict)

    def __post_init__(self):
        self.alerts_topic = self.prefix + topics.DERIVED_ALERTS
        self.topic = self.prefix + topics.DISPOSITIONS
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._moved = asyncio.Condition()
        self._lock = asyncio.Lock()
        self.ready = asyncio.Event()

    # ----------------------------------------------------------------- life
    async def start(self, producer: AIOKafkaProducer, partitions: dict[str, int]) -> None:
        """Read the topics from their start (``partitions``: their partition counts, the hub's, which created
        them); record new dispositions with ``producer`` (the gateway's)."""
        self._producer = producer
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                          client_id="yrdbus-gateway-ledger", auto_offset_reset="earliest",
                                          isolation_level="read_committed", fetch_max_wait_ms=50,
                                          **self.kafka_options)
        await self._consumer.start()
        tps = [TopicPartition(t, p) for t in (self.alerts_topic, self.topic) for p in range(partitions[t])]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        for tp in tps:
            self._positions[tp] = await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="gateway-ledger")
        self.ready.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        codec = get_codec()
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker going away is retried
                log.warning("ledger consumer: %s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    try:
                        if tp.topic == self.alerts_topic:
                            self._learn_alert(codec.decode(record.value, kind="derived_alert")[1])
                        else:
                            self._learn(codec.decode(record.value, kind="disposition")[1])
                    except EventError as exc:
                        log.warning("%s[%d]@%d skipped: %s", tp.topic, tp.partition, record.offset, exc)
                    self._positions[tp] = record.offset + 1
            for tp in self._consumer.assignment():
                self._positions[tp] = max(self._positions.get(tp, 0), await self._consumer.position(tp))
            async with self._moved:
                self._moved.notify_all()

    def _learn_alert(self, alert: dict) -> None:
        known = self.alerts.get(alert["alert_id"])
        if known is None or alert["emitted_at"] >= known.emitted_at:
            self.alerts[alert["alert_id"]] = AlertFacts(list(alert["must_act"]), list(alert["inform"]), alert["kind"],
                                                        alert["severity"], alert.get("status") or "RAISED",
                                                        alert["emitted_at"])
            if alert["kind"] == "HEIGHTENED_MODE":
                w = Window.of(alert)
                self.windows[w.window_id] = self.windows[w.alert_id] = w

    def _learn(self, d: dict) -> None:
        step = "ack" if d["outcome"] == "ACKNOWLEDGED" else "settle"
        self.recorded.setdefault((d["alert_id"], d.get("region"), step), d)

    async def caught_up(self, timeout_s: float = 10.0) -> bool:
        """Wait until the ledger has read everything on its topics at this moment."""
        tps = list(self._positions)
        ends = await self._consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._moved:
            while any(self._positions.get(tp, 0) < ends[tp] for tp in tps):
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._moved.wait(), left)
                except asyncio.TimeoutError:
                    return False
        return True

    async def window(self, name: str):
        """The heightened window named by its id or its announcement's alert id, as last announced (None:
        no such window); raises DispositionError(503) when the ledger cannot catch up."""
        if not await self.caught_up():
            raise DispositionError(503, "behind", "the gateway has not yet read the alert topics up to now; "
                                                  "try again in a moment")
        return self.windows.get(name)

    # ----------------------------------------------------------------- deciding
    async def dispose(self, entry: TokenEntry, alert_id: str, outcome: str, note: str) -> tuple[int, list[dict]]:
        """Record ``outcome`` of ``alert_id`` for ``entry``'s region: (201 new | 200 already so, the records)."""
        outcome, note = check_request(outcome, note)
        # decide on everything published before the request: the alert's newest version (withdrawn?) and
        # the dispositions other gateways recorded
        if not await self.caught_up():
            raise DispositionError(503, "behind", "the gateway has not yet read the alert topics up to now; "
                                                  "try again in a moment")
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise DispositionError(404, "unknown_alert", f"alert {alert_id!r}: no derived alert has this id")
        region = region_for(entry, alert, alert_id)
        async with self._lock:
            steps = ["ack"] if outcome == "ACKNOWLEDGED" else ["ack", "settle"]
            if outcome != "ACKNOWLEDGED":
                if alert.status == "WITHDRAWN":
                    raise DispositionError(409, "withdrawn", f"alert {alert_id!r} was withdrawn by the stream layer; "
                                                             f"it can be acknowledged, not settled")
                settled = self.recorded.get((alert_id, region, "settle"))
                if settled is not None and settled["outcome"] != outcome:
                    raise DispositionError(409, "already_settled",
                                           f"alert {alert_id!r} was settled as {settled['outcome']} by "
                                           f"{settled['officer']} for {region or 'the command centre'}; a settlement "
                                           f"is not changed")
            now = datetime.now(timezone.utc)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            out, new = [], []
            for step in steps:
                have = self.recorded.get((alert_id, region, step))
                if have is not None:
                    out.append(have)
                    continue
                record = {"disposition_id": disposition_id(alert_id, region, step), "alert_id": alert_id,
                          "outcome": "ACKNOWLEDGED" if step == "ack" else outcome, "region": region,
                          "officer": entry.id, "note": note if step == steps[-1] else "",
                          "must_act": list(alert.must_act), "inform": list(alert.inform), "kind": alert.kind,
                          "severity": alert.severity, "decided_at": now}
                new.append(record)
                out.append(record)
            codec = get_codec()
            for record in new:
                await self._producer.send_and_wait(self.topic, codec.encode("disposition", record),
                                                   key=alert_id.encode())
                self._learn(record)
        return (201 if new else 200), out


def check_request(outcome, note) -> tuple[str, str]:
    if not isinstance(outcome, str) or outcome.upper() not in OUTCOMES:
        raise DispositionError(400, "bad_request", f"field `outcome`: expected one of {', '.join(OUTCOMES)}, "
                                                   f"got {outcome!r}")
    if note is None:
        note = ""
    if not isinstance(note, str):
        raise DispositionError(400, "bad_request", f"field `note`: expected text, got {type(note).__name__}")
    if len(note) > MAX_NOTE:
        raise DispositionError(400, "bad_request", f"field `note`: at most {MAX_NOTE} characters, got {len(note)}")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in note):
        raise DispositionError(400, "bad_request", "field `note`: control characters are not allowed")
    return outcome.upper(), note.strip()


def region_for(entry: TokenEntry, alert: AlertFacts, alert_id: str) -> str | None:
    """The region ``entry`` disposes for: one of its regions the alert must act on (else is informed of);
    None for the command centre."""
    scope = entry.scope
    if scope.all:
        return None
    for group in (alert.must_act, alert.inform):
        for r in REGIONS:
            if r in group and r in scope.regions:
                return r
    raise DispositionError(403, "forbidden", f"token {entry.id!r} ({scope.text()}) may not dispose of alert "
                                             f"{alert_id!r}: it is for {', '.join(alert.must_act)}"
                                             + (f" (informing {', '.join(alert.inform)})" if alert.inform else ""))


def disposition_id(alert_id: str, region: str | None, step: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{alert_id}|{region or 'ALL'}|{step}"))


