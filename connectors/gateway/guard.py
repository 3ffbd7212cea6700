"""Subscribers that stop reading are disconnected: every write to a stream connection is bounded in time.

A subscriber whose queue overflows is cut from the stream with ``lagged`` (``hub.py``), but the
connection itself is the bigger cost: a client that stops reading keeps the kernel's socket buffers
and the transport's write buffer full, megabytes each, and asyncio's ``transport.close()`` waits for
that buffer to be sent - to a client that never reads, forever.

So each streaming connection (SSE, WebSocket) has a ``WriteGuard``:

* every write (an event, a keep-alive ping, the final ``lagged``/``closing``) must complete within
  ``gateway_subscriber_write_timeout_s`` (30 s by default). A write blocks only while the connection
  cannot take more bytes (uvicorn's flow control pauses the sender when the transport's buffer is
  over its high-water mark), so this measures "has not read" by the transport itself. When a write
  does not complete in time the connection is aborted (a TCP reset: the kernel's buffers and the
  transport's are released at once), the subscriber is detached and its queue emptied, the metric
  ``yrdbus_gateway_subscribers_disconnected_total{kind, reason="write_timeout"}`` counts it and the
  log says so (the token id, never a token).
* once the stream has ended (``lagged``, ``closing``), bytes still buffered for the client must be
  taken within the same time, or the connection is aborted too (reason ``drain_timeout``).

A subscriber that is idle because no alert matches is never closed: nothing is written to it but
keep-alive comments, and those complete at once. A disconnected subscriber resumes like any other:
with ``Last-Event-ID`` (or ``since=``) set to the last event it received, it is replayed what it
missed from Kafka.

Aborting needs the connection's transport, which ASGI does not expose: ``with_transport`` makes
uvicorn protocol classes that put it in ``scope["extensions"]["yrdbus.transport"]``
(``app.make_server`` uses them). Served otherwise, a stalled write ends the response with
``SubscriberStalled`` and the server closes the connection its own way.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Optional

from connectors.gateway.metrics import GatewayMetrics

log = logging.getLogger("yrdbus.gateway")

TRANSPORT = "yrdbus.transport"


class SubscriberStalled(TimeoutError):
    """A write to a subscriber did not complete in time, and the connection could not be aborted here."""


def transport_of(scope) -> Optional[asyncio.Transport]:
    return (scope.get("extensions") or {}).get(TRANSPORT)


def with_transport(base: type) -> type:
    """A subclass of the uvicorn protocol ``base`` whose requests carry their transport in the scope."""

    class Protocol(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            app = self.app

            async def app_with_transport(scope, receive, send):
                extensions = scope.get("extensions")
                if extensions is None:
                    extensions = scope["extensions"] = {}
                extensions[TRANSPORT] = self.transport
                return await app(scope, receive, send)

            self.app = app_with_transport

    Protocol.__name__ = Protocol.__qualname__ = f"WithTransport{base.__name__}"
    return Protocol


class WriteGuard:
    """Bounds every write to one subscriber's connection; aborts the connection when one does not complete."""

    #: the lingering checks of ended streams, kept referenced until they finish
    _lingering: set[asyncio.Task] = set()

    def __init__(self, scope, kind: str, timeout_s: float, metrics: GatewayMetrics, *, who: str,
                 on_cut: Callable[[], None] | None = None):
        self.transport = transport_of(scope)
        self.kind = kind
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.who = who                      # the token id (never the token)
        self.client = scope.get("client")
        self.on_cut = on_cut
        self.cut_reason: str | None = None

    @property
    def cut(self) -> bool:
        return self.cut_reason is not None

    async def write(self, make: Callable[[], Awaitable[None]]) -> bool:
        """Run one write (``make()`` makes it); False when the subscriber is (now) cut off instead."""
        if self.cut:
            return False
        try:
            async with asyncio.timeout(self.timeout_s):
                await make()
            return True
        except TimeoutError:
            self.disconnect("write_timeout")
            return False

    def wrap_send(self, send):
        """An ASGI ``send`` whose every message goes through ``write``."""

        async def guarded(message) -> None:
            if not await self.write(lambda: send(message)) and self.transport is None:
                raise SubscriberStalled(f"a write to this {self.kind} subscriber did not complete "
                                        f"within {self.timeout_s:g} s")

        return guarded

    def disconnect(self, reason: str) -> None:
        """Abort the connection, release the subscriber, count and log it (once)."""
        if self.cut:
            return
        self.cut_reason = reason
        pending = 0
        if self.transport is not None:
            try:
                pending = self.transport.get_write_buffer_size()
            except Exception:  # an already lost transport
                pending = 0
            self.transport.abort()
        self.metrics.disconnected.labels(self.kind, reason).inc()
        where = "%s:%s" % tuple(self.client) if self.client else "?"
        what = ("its connection took no bytes" if reason == "write_timeout"
                else "the end of its stream was not read")
        log.warning("%s subscriber %s (token id %r) disconnected: %s for %g s (%s, %d bytes unsent); "
                    "it can resume with its last event id", self.kind, where, self.who, what, self.timeout_s,
                    reason, pending)
        if self.on_cut is not None:
            self.on_cut()

    def linger(self) -> None:
        """The stream has ended: what is still buffered for the client must go within the time, or abort."""
        transport = self.transport
        if self.cut or transport is None:
            return
        try:
            if transport.get_write_buffer_size() == 0:
                return
        except Exception:
            return
        task = asyncio.get_running_loop().create_task(self._linger(transport), name=f"linger-{self.kind}")
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    async def _linger(self, transport: asyncio.Transport) -> None:
        last = transport.get_write_buffer_size()
        since = time.monotonic()
        step = min(0.5, self.timeout_s / 4)
        while True:
            await asyncio.sleep(step)
            size = transport.get_write_buffer_size()
            if size == 0:
                return
            if size < last:               # the client reads, however slowly
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= self.timeout_s:
                self.disconnect("drain_timeout")
                return
