"""Webhook subscriptions: POST each alert, signed, retried with backoff, dead-lettered when it cannot be delivered.

Each webhook reads its topics with a Kafka consumer group of its own
(``yrdbus-gateway-webhook-<name>``) and commits an alert's offset only after
the alert was delivered or dead-lettered: a gateway restart resumes where it
stopped, and an alert is delivered at least once (receivers deduplicate by
the ``X-Yrdbus-Delivery`` header: the alert id, and ``<alert id>:WITHDRAWN`` for
the version that withdraws an alert, which is delivered too, its status in
``X-Yrdbus-Alert-Status``). Alerts go out one at a time, in order; a failing
receiver holds up only its own webhook.

The body is JSON, signed as Standard Webhooks sign (``webhook-id``: the delivery id,
``webhook-timestamp``, ``webhook-signature: v1,<base64>``; any Standard Webhooks library verifies it with
``whsec_<base64 of the secret>``); ``X-Yrdbus-Signature: sha256=<hex>``, the HMAC-SHA256 of
the exact body bytes with the webhook's secret, is kept for receivers written against it, and the body carries
``sent_at`` (also in ``X-Yrdbus-Timestamp``, Unix seconds), so a receiver can
refuse a replayed request. Network errors, timeouts, 408, 425, 429 and 5xx
are retried with exponential backoff and jitter; other statuses (a 4xx means
the subscription is wrong, not the moment) and the last failed attempt send
the alert's original bytes to ``dlq.webhooks`` with the reason in headers.

Targets are checked (``connectors.gateway.egress``): http(s) only, and a host that is, and resolves
to, a public address, unless the webhook's entry sets ``allow_private = true``. The check runs when
the access file is loaded and again at every attempt, on the address the request then goes to; an
alert whose target resolves to a refused address is not posted but dead-lettered (reason
``forbidden_address``). Redirects are never followed.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from schemas.deadletter import headers_for

from connectors.gateway.access import AccessFile, AccessFileError, Forbidden, parse_scope, secret_from
from connectors.gateway.egress import ForbiddenTarget, check_at_load, resolve_target
from connectors.gateway.hub import decode_item
from connectors.gateway.metrics import GatewayMetrics
from connectors.gateway.selection import (
    BadRequest, Item, Selection, TopicNames, delivery_id, select, version_key)

log = logging.getLogger("yrdbus.gateway.webhooks")

RETRIED_STATUSES = {408, 425, 429}


@dataclass(frozen=True)
class WebhookSpec:
    name: str
    url: str
    selection: Selection
    secret: bytes
    attempts: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: float
    start: str            # where a new subscription starts: latest | earliest
    allow_private: bool = False   # may reach loopback, private, link-local addresses (egress.py)

    @property
    def group(self) -> str:
        return f"yrdbus-gateway-webhook-{self.name}"


def load_webhooks(file: AccessFile, names: TopicNames, *, attempts: int, backoff_s: float,
                  backoff_max_s: float, timeout_s: float) -> list[WebhookSpec]:
    """The ``[[webhooks]]`` of the access file; AccessFileError names the entry and field at fault."""
    out: list[WebhookSpec] = []
    seen: set[str] = set()
    allowed = {"name", "url", "all", "regions", "stations", "min_severity", "kinds", "secret_env", "secret_file",
               "attempts", "backoff_s", "timeout_s", "start", "note", "allow_private"}
    for i, entry in enumerate(file.webhooks):
        where = f"{file.path}, webhooks[{i}]"
        if not isinstance(entry, dict):
            raise AccessFileError(f"{where}: expected a table, got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise AccessFileError(f"{where}, field `name`: required; letters, digits, '-' or '_'")
        where = f"{file.path}, webhooks[{i}] (name {name!r})"
        if name in seen:
            raise AccessFileError(f"{where}, field `name`: {name!r} is given twice")
        seen.add(name)
        extra = set(entry) - allowed
        if extra:
            raise AccessFileError(f"{where}: unknown field(s) {sorted(extra)}")
        url = entry.get("url")
        allow_private = entry.get("allow_private", False)
        if not isinstance(allow_private, bool):
            raise AccessFileError(f"{where}, field `allow_private`: expected true or false, got {allow_private!r}")
        try:
            check_at_load(url, allow_private=allow_private)
        except ForbiddenTarget as exc:
            raise AccessFileError(f"{where}, field `url`: {exc}") from None
        scope = parse_scope(entry, where)
        kinds = entry.get("kinds", [])
        if not isinstance(kinds, list):
            raise AccessFileError(f"{where}, field `kinds`: expected a list of alert kinds")
        try:
            selection = select(scope, name, names, min_severity=entry.get("min_severity"), kinds=kinds)
        except (BadRequest, Forbidden) as exc:
            raise AccessFileError(f"{where}: {str(exc).replace('parameter ', 'field ')}") from None
        start = entry.get("start", "latest")
        if start not in ("latest", "earliest"):
            raise AccessFileError(f"{where}, field `start`: expected 'latest' or 'earliest', got {start!r}")
        try:
            n = int(entry.get("attempts", attempts))
            b = float(entry.get("backoff_s", backoff_s))
            t = float(entry.get("timeout_s", timeout_s))
        except (TypeError, ValueError) as exc:
            raise AccessFileError(f"{where}: `attempts`, `backoff_s` and `timeout_s` must be numbers ({exc})") from None
        if n < 1 or b < 0 or t <= 0:
            raise AccessFileError(f"{where}: `attempts` must be >= 1, `backoff_s` >= 0, `timeout_s` > 0")
        out.append(WebhookSpec(name=name, url=url, selection=selection, secret=secret_from(entry, where),
                               attempts=n, backoff_s=b, backoff_max_s=max(backoff_max_s, b), timeout_s=t,
                               start=start, allow_private=allow_private))
    return out


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def standard_signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` of Standard Webhooks (standardwebhooks.com): ``v1,<base64 HMAC-SHA256 of
    "<webhook-id>.<webhook-timestamp>.<body>">`` with the secret's bytes; a receiver's library verifies it
    with the secret written ``whsec_<base64 of the secret>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.status = reason, detail, status


class _Permanent(_Retryable):
    pass


class WebhookWorker:
    """Delivers one webhook's alerts, in order, from its own consumer group."""

    def __init__(self, spec: WebhookSpec, *, bootstrap: str, names: TopicNames, client: httpx2.AsyncClient,
                 producer: AIOKafkaProducer, metrics: GatewayMetrics, kafka_options: dict | None = None):
        self.spec = spec
        self.bootstrap = bootstrap
        self.kafka_options = dict(kafka_options or {})   # the gateway principal's (aiokafka_security)
        self.names = names
        self.client = client
        self.producer = producer
        self.metrics = metrics
        self.ready = asyncio.Event()
        self.delivered = 0
        self.dead_lettered = 0
        self._seen: dict[tuple[str, str], None] = {}

    def status(self) -> dict:
        return {"ready": self.ready.is_set(), "delivered": self.delivered, "dead_lettered": self.dead_lettered,
                "topics": self.spec.selection.topics}

    async def run(self) -> None:
        spec = self.spec
        consumer = AIOKafkaConsumer(
            *spec.selection.topics, bootstrap_servers=self.bootstrap, group_id=spec.group,
            client_id=f"yrdbus-gateway-webhook-{spec.name}", enable_auto_commit=False,
            auto_offset_reset=spec.start, isolation_level="read_committed", fetch_max_wait_ms=100,
            **self.kafka_options,
            # the longest a record can take: every attempt timing out plus every backoff, with room to spare
            max_poll_interval_ms=int(1000 * (spec.attempts * (spec.timeout_s + spec.backoff_max_s) + 60)))
        await consumer.start()
        self.metrics.subscribers.labels("webhook").inc()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=50)
                if not self.ready.is_set() and consumer.assignment():
                    for tp in consumer.assignment():
                        await consumer.position(tp)   # resolves `start` now, before anyone publishes
                    self.ready.set()
                for tp, records in batch.items():
                    for record in records:
                        try:
                            await self.handle(record)
                        except asyncio.CancelledError:
                            raise
                        except Exception as exc:  # e.g. the dead-letter topic unreachable: try this record again
                            log.warning("webhook %s: %s[%d]@%d not settled (%s); retrying",
                                        spec.name, record.topic, record.partition, record.offset, exc)
                            consumer.seek(tp, record.offset)
                            await asyncio.sleep(1.0)
                            break
                        await consumer.commit({tp: record.offset + 1})
        finally:
            self.metrics.subscribers.labels("webhook").dec()
            await consumer.stop()

    async def handle(self, record) -> None:
        item = decode_item(self.names, self.metrics, record)
        if item is None:
            await self.dead_letter(record, "undecodable", "the record does not decode as a DerivedAlert", 0, None)
            return
        if not self.spec.selection.matches(item) or self._duplicate(item):
            return
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.spec.attempts),
            wait=wait_exponential_jitter(multiplier=self.spec.backoff_s, max=self.spec.backoff_max_s,
                                         jitter=self.spec.backoff_s / 2),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable) and not isinstance(e, _Permanent)),
            reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    await self._post(item, attempts)
        except _Retryable as exc:
            await self.dead_letter(record, exc.reason, exc.detail, attempts, exc.status, item)
            return
        self.delivered += 1

    def _duplicate(self, item: Item) -> bool:
        if len(self.spec.selection.sources) < 2:
            return False
        key = version_key(item.alert)   # a withdrawal is not a duplicate of the alert it withdraws
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > 10_000:
            self._seen.pop(next(iter(self._seen)))
        return False

    async def _post(self, item: Item, attempt: int) -> None:
        spec = self.spec
        now = time.time()
        body = json.dumps({
            "webhook": spec.name,
            "delivery_id": delivery_id(item.alert),
            "attempt": attempt,
            "sent_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "alert": item.view,
        }, separators=(",", ":")).encode()
        msg_id = delivery_id(item.alert)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "yrdbus-gateway",
            # Standard Webhooks: the same id on every attempt (receivers deduplicate by it)
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": standard_signature(spec.secret, msg_id, int(now), body),
            "X-Yrdbus-Signature": sign(spec.secret, body),
            "X-Yrdbus-Timestamp": str(int(now)),
            "X-Yrdbus-Delivery": delivery_id(item.alert),
            "X-Yrdbus-Alert-Status": item.alert.get("status") or "RAISED",
            "X-Yrdbus-Attempt": str(attempt),
        }
        self.metrics.webhook_attempts.labels(spec.name).inc()
        try:   # resolved once per attempt; the POST goes to the address checked here, whatever DNS says next
            target = await resolve_target(spec.url, allow_private=spec.allow_private, attempt=attempt)
        except ForbiddenTarget as exc:
            self.metrics.webhook_failures.labels(spec.name, "forbidden_address").inc()
            log.warning("webhook %s: not posted: %s", spec.name, exc)
            raise _Permanent("forbidden_address", f"{exc} (not posted)") from None
        except OSError as exc:
            self.metrics.webhook_failures.labels(spec.name, "dns").inc()
            raise _Retryable("dns", f"cannot resolve the webhook's host: {exc}") from None
        try:
            response = await self.client.post(target.url, content=body, headers={**headers, **target.headers},
                                              timeout=spec.timeout_s, extensions=target.extensions,
                                              follow_redirects=False)
        except httpx2.TimeoutException as exc:
            self.metrics.webhook_failures.labels(spec.name, "timeout").inc()
            raise _Retryable("timeout", f"no answer within {spec.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx2.TransportError as exc:
            self.metrics.webhook_failures.labels(spec.name, "network").inc()
            raise _Retryable("network", f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if 200 <= status < 300:
            self.metrics.delivered.labels("webhook").inc()
            self.metrics.delay.labels("webhook").observe(max(0.0, time.time() - item.emitted_at))
            return
        self.metrics.webhook_failures.labels(spec.name, str(status)).inc()
        detail = f"HTTP {status} {response.reason_phrase}".strip()
        if status in RETRIED_STATUSES or status >= 500:
            raise _Retryable(f"http_{status}", detail, status)
        if 300 <= status < 400:
            detail += " (redirects are not followed: configure the final URL)"
        raise _Permanent(f"http_{status}", detail + " (not retried)", status)

    async def dead_letter(self, record, reason: str, detail: str, attempts: int, status: int | None,
                          item: Item | None = None) -> None:
        # The bus's dead-letter headers (schemas.deadletter), with this webhook's own facts added.
        headers = [(k, v) for k, v in headers_for(record.topic, detail, partition=record.partition,
                                                   offset=record.offset) if k != "reason"]
        headers += [
            ("reason", reason.encode()),
            ("webhook", self.spec.name.encode()),
            ("attempts", str(attempts).encode()),
            ("failed_at", datetime.now(timezone.utc).isoformat(timespec="milliseconds").encode()),
        ]
        if status is not None:
            headers.append(("http_status", str(status).encode()))
        if item is not None:
            headers.append(("alert_id", item.alert["alert_id"].encode()))
        await self.producer.send_and_wait(self.names.webhook_dead_letters, record.value, key=record.key,
                                          headers=headers)
        self.dead_lettered += 1
        self.metrics.webhook_dead_letters.labels(self.spec.name).inc()
        log.warning("webhook %s: %s[%d]@%d dead-lettered after %d attempt(s): %s",
                    self.spec.name, record.topic, record.partition, record.offset, attempts, detail)
