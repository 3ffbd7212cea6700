"""The gateway's Prometheus metrics, in base units (seconds, counts), on a registry of its own.

A registry per gateway keeps two gateways in one process (tests, benchmarks)
from colliding on the global one.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds from the stream layer's emitted_at to the moment the gateway hands the alert over.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.subscribers = Gauge("yrdbus_gateway_subscribers", "Subscribers connected now, by kind (sse, ws, webhook).",
                                 ["kind"], registry=r)
        self.delivered = Counter("yrdbus_gateway_alerts_delivered", "Alerts handed to subscribers, by kind.",
                                 ["kind"], registry=r)
        self.lagged = Counter("yrdbus_gateway_subscriber_lagged",
                              "Subscribers cut off because their buffer was full, by kind.", ["kind"], registry=r)
        self.webhook_attempts = Counter("yrdbus_gateway_webhook_attempts", "HTTP POST attempts to webhooks.",
                                        ["webhook"], registry=r)
        self.webhook_failures = Counter("yrdbus_gateway_webhook_failures",
                                        "Failed webhook attempts, by reason (status code, timeout, network, dns, "
                                        "forbidden_address).",
                                        ["webhook", "reason"], registry=r)
        self.webhook_dead_letters = Counter("yrdbus_gateway_webhook_dead_letters",
                                            "Alerts dead-lettered to dlq.webhooks after the last attempt.",
                                            ["webhook"], registry=r)
        self.undecodable = Counter("yrdbus_gateway_undecodable_records",
                                   "Records on the alert topics that do not decode as DerivedAlert (skipped, logged).",
                                   ["topic"], registry=r)
        self.delay = Histogram("yrdbus_gateway_delivery_delay_seconds",
                               "From the alert's emitted_at to its hand-over to a subscriber, by kind.",
                               ["kind"], buckets=DELAY_BUCKETS, registry=r)
        # write_timeout: the connection took no bytes for gateway_subscriber_write_timeout_s while an event or a
        # keep-alive waited to be written; drain_timeout: the stream had ended (lagged, closing) and what was still
        # buffered for the client was not taken within that time either. Both abort the connection.
        self.disconnected = Counter("yrdbus_gateway_subscribers_disconnected",
                                    "Stream subscribers the gateway disconnected because they stopped reading, "
                                    "by kind and reason (write_timeout, drain_timeout).",
                                    ["kind", "reason"], registry=r)
        for kind in ("sse", "ws", "webhook"):
            self.subscribers.labels(kind)
            self.delivered.labels(kind)
            self.lagged.labels(kind)
        for kind in ("sse", "ws"):
            for reason in ("write_timeout", "drain_timeout"):
                self.disconnected.labels(kind, reason)
