"""The gateway's HTTP face: SSE and WebSocket streams, stream tickets, the wall, health and metrics.

Routes:
  GET  /alerts/stream   Server-Sent Events (``?region=&station=&min_severity=&kind=&since=&from_time=``,
                        ``Last-Event-ID`` resumes); ``event:`` is hello, alert, gap, lagged or closing,
                        ``id:`` the cursor, ``data:`` JSON.
  WS   /alerts/ws       the same stream as JSON messages ``{"type", "id", "data"}``.
  POST /auth/ticket     a bearer token buys a short-lived ticket for opening a stream from a browser.
  POST /alerts/{id}/dispositions  a region's officer acknowledges or settles a derived alert
                        (``{"outcome": "ACKNOWLEDGED|CONFIRMED|FALSE_ALARM|NO_ACTION", "note": ...}``,
                        ``dispositions.py``): 201 recorded, 200 already so, 403, 404, 409.
  POST /control/heightened  a command-centre token declares heightened mode for regions and a window
  POST /control/heightened/{window}/end  ... and ends one early (the window's id or its announcement's alert id)
                        (``control.py``): the ControlEvent goes on the ``control`` topic.
  GET  /auth/whoami     the token's id and scope.
  GET  /, /wall         the live alert wall (static files under /static, nothing from elsewhere).
  GET  /healthz         whether the live consumer and each webhook are ready.
  GET  /metrics         Prometheus.

A stream subscriber whose connection takes no bytes for ``gateway_subscriber_write_timeout_s``
(30 s) is disconnected and its buffers released (``guard.py``); it resumes with its last event id.
Serve the app with ``make_server`` (it hands the guard the connection's transport, to abort it).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import httpx2
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from schemas import topics
from schemas.codec import get_codec
from schemas.settings import Settings

from connectors.gateway.access import AccessControl, Forbidden, TokenEntry, Unauthorized
from connectors.gateway.control import ControlError, end_event, heightened_event
from connectors.gateway.dispositions import DispositionError, Ledger
from connectors.gateway.guard import WriteGuard, with_transport
from connectors.gateway.hub import Feed, Hub
from connectors.gateway.metrics import GatewayMetrics
from connectors.gateway.selection import BadRequest, Selection, TopicNames, json_ready, select
from connectors.gateway.webhooks import WebhookWorker, load_webhooks

log = logging.getLogger("yrdbus.gateway")

STATIC = Path(__file__).resolve().parent / "static"
RETRY_MS = 2000   # what an EventSource waits before it reconnects by itself

# The wall loads nothing from anywhere else; the policy makes the browser refuse if it ever tried.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"referrer-policy", b"no-referrer"),     # a ticket in a stream URL never leaves in a Referer
    (b"x-content-type-options", b"nosniff"),
]


class _GuardedEventSource(EventSourceResponse):
    """An SSE response whose every write goes through the subscriber's WriteGuard (guard.py)."""

    def __init__(self, content, *, guard: WriteGuard, **options):
        super().__init__(content, send_timeout=None, **options)
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, self.guard.wrap_send(send))
        finally:
            self.guard.linger()


class _SecurityHeaders:
    """Pure ASGI (no BaseHTTPMiddleware) so streamed responses are not buffered."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, with_headers)


def reference_names() -> dict:
    """{regions|ports|stations: {code: {"zh-CN": ..., "en": ...}}}. A station's Chinese name is its first port's
    Chinese name with 边检站 (the reference data names stations in English only)."""
    from schemas import reference

    ports = reference.ports()
    out = {"regions": {c: {"zh-CN": r.get("name_zh") or r["name"], "en": r["name"]}
                       for c, r in reference.regions().items()},
           "ports": {c: {"zh-CN": p.name_zh or p.name, "en": p.name} for c, p in ports.items()},
           "stations": {}}
    for sid, st in reference.stations().items():
        first = ports.get((st.get("ports") or [None])[0])
        out["stations"][sid] = {"zh-CN": f"{first.name_zh}边检站" if first and first.name_zh else st["name"],
                                "en": st["name"]}
    return out


def _problem(status: int, error: str, message: str, **extra) -> JSONResponse:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="yrdbus-gateway", error="invalid_token"'
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def _forbidden(exc: Forbidden) -> JSONResponse:
    extra = {"token": exc.token_id, "scope": exc.scope}
    if exc.region:
        extra["region"] = exc.region
    if exc.station:
        extra["station"] = exc.station
    return _problem(403, "forbidden", str(exc), **extra)


def _parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"parameter `from_time`: {value!r} is not an ISO 8601 time (e.g. 2025-03-01T08:00:00Z)") from None
    if t.tzinfo is None:
        raise BadRequest(f"parameter `from_time`: {value!r} has no time zone; add Z or +08:00")
    return t


class Gateway:
    """The whole service: access control, the live hub, webhook workers, and the Starlette app."""

    def __init__(self, settings: Settings, *, tokens_file: Path | None = None, topic_prefix: str = "",
                 queue_size: int | None = None, write_timeout_s: float | None = None, ticket_ttl_s: float = 60.0,
                 webhook_backoff_max_s: float = 30.0, webhook_timeout_s: float = 5.0):
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.names = TopicNames(topic_prefix)
        self.access = AccessControl(tokens_file or settings.gateway_tokens_file, ticket_ttl_s=ticket_ttl_s)
        self.hub = Hub(settings.bootstrap, self.names, self.metrics,
                       queue_size=queue_size or settings.gateway_queue_size, settings=settings)
        # how long a write to a stream subscriber may wait for its connection to take bytes (guard.py)
        self.write_timeout_s = write_timeout_s or settings.gateway_subscriber_write_timeout_s
        self.webhook_specs = load_webhooks(
            self.access.file, self.names, attempts=settings.gateway_webhook_attempts,
            backoff_s=settings.gateway_webhook_backoff_s, backoff_max_s=webhook_backoff_max_s,
            timeout_s=webhook_timeout_s)
        self.ledger = Ledger(settings.bootstrap, topic_prefix, kafka_options=self.hub.kafka_options)
        self.webhooks: list[WebhookWorker] = []
        self._tasks: list[asyncio.Task] = []
        self._producer: AIOKafkaProducer | None = None
        self._bus: AIOKafkaProducer | None = None
        self._client: httpx2.AsyncClient | None = None
        self.app = self._build_app()

    # ----------------------------------------------------------------- life
    async def start(self) -> None:
        await self.hub.start()
        # what the gateway writes itself: officers' dispositions and the console's control events
        self._bus = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, acks="all", enable_idempotence=True,
                                     client_id="yrdbus-gateway", **self.hub.kafka_options)
        await self._bus.start()
        await self.ledger.start(self._bus, self.hub.partitions)
        if self.webhook_specs:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, acks="all",
                                              enable_idempotence=True, client_id="yrdbus-gateway-dlq",
                                              **self.hub.kafka_options)
            await self._producer.start()
            self._client = httpx2.AsyncClient(follow_redirects=False)
            for spec in self.webhook_specs:
                worker = WebhookWorker(spec, bootstrap=self.settings.bootstrap, names=self.names,
                                       client=self._client, producer=self._producer, metrics=self.metrics,
                                       kafka_options=self.hub.kafka_options)
                self.webhooks.append(worker)
                self._tasks.append(asyncio.create_task(self._keep_running(worker), name=f"webhook-{spec.name}"))

    async def _keep_running(self, worker: WebhookWorker) -> None:
        while True:
            try:
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook %s stopped; restarting in 2 s", worker.spec.name)
                worker.ready.clear()
                await asyncio.sleep(2.0)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.hub.stop()
        await self.ledger.stop()
        if self._bus:
            await self._bus.stop()
        if self._client:
            await self._client.aclose()
        if self._producer:
            await self._producer.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # ----------------------------------------------------------------- auth
    async def _entry(self, authorization: Optional[str], ticket: Optional[str], token_in_url: bool) -> TokenEntry:
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("the Authorization header must be `Bearer <token>`")
            token = value.strip()
            if self.access.needs_hashing(token):   # scrypt off the event loop: the streams go on meanwhile
                return await run_in_threadpool(self.access.authenticate, token)
            return self.access.authenticate(token)
        if ticket:
            return self.access.redeem_ticket(ticket)
        if token_in_url:
            raise Unauthorized("a token is never accepted in a URL; send it as `Authorization: Bearer <token>`, "
                               "or trade it for a ticket at POST /auth/ticket")
        return self.access.authenticate(None)

    def _select(self, entry: TokenEntry, params) -> Selection:
        return select(entry.scope, entry.id, self.names, regions=params.getlist("region"),
                      stations=params.getlist("station"), min_severity=params.get("min_severity"),
                      kinds=params.getlist("kind"), dispositions=True)

    def _guard(self, scope, kind: str, entry: TokenEntry, feed: Feed) -> WriteGuard:
        return WriteGuard(scope, kind, self.write_timeout_s, self.metrics, who=entry.id, on_cut=feed.cut)

    async def _open_feed(self, kind: str, entry: TokenEntry, params, last_event_id: Optional[str]) -> Feed:
        selection = self._select(entry, params)
        cursor = last_event_id or params.get("since")
        from_time = _parse_time(params["from_time"]) if params.get("from_time") and not cursor else None
        return await Feed.open(self.hub, kind, selection, cursor=cursor, from_time=from_time)

    # ----------------------------------------------------------------- routes
    async def stream(self, request: Request) -> Response:
        try:
            entry = await self._entry(request.headers.get("authorization"), request.query_params.get("ticket"),
                                "token" in request.query_params)
            feed = await self._open_feed("sse", entry, request.query_params, request.headers.get("last-event-id"))
        except Unauthorized as exc:
            return _problem(401, "unauthorized", str(exc))
        except Forbidden as exc:
            return _forbidden(exc)
        except BadRequest as exc:
            return _problem(400, "bad_request", str(exc))
        metrics = self.metrics
        guard = self._guard(request.scope, "sse", entry, feed)

        async def events():
            try:
                async for ev in feed.events():
                    yield ServerSentEvent(data=json.dumps(ev.data, separators=(",", ":")), event=ev.kind, id=ev.id,
                                          retry=RETRY_MS if ev.kind == "hello" else None)
                    if ev.item is not None:   # resumed here: the event has been written to the connection
                        metrics.delivered.labels("sse").inc()
                        metrics.delay.labels("sse").observe(max(0.0, time.time() - ev.item.emitted_at))
            finally:
                await feed.close()

        # The background task also releases a feed whose generator never started (client gone at once, HEAD).
        return _GuardedEventSource(events(), guard=guard, ping=15, headers={"Cache-Control": "no-store"},
                                   background=BackgroundTask(feed.close))

    async def websocket(self, websocket: WebSocket) -> None:
        try:
            entry = await self._entry(websocket.headers.get("authorization"), websocket.query_params.get("ticket"),
                                "token" in websocket.query_params)
            feed = await self._open_feed("ws", entry, websocket.query_params, None)
        except Unauthorized as exc:
            return await self._deny(websocket, _problem(401, "unauthorized", str(exc)), 4401, str(exc))
        except Forbidden as exc:
            return await self._deny(websocket, _forbidden(exc), 4403, str(exc))
        except BadRequest as exc:
            return await self._deny(websocket, _problem(400, "bad_request", str(exc)), 4400, str(exc))
        metrics = self.metrics
        guard = self._guard(websocket.scope, "ws", entry, feed)
        if not await guard.write(websocket.accept):
            await feed.close()
            return

        async def pump() -> None:
            async for ev in feed.events():
                message = json.dumps({"type": ev.kind, "id": ev.id, "data": ev.data}, separators=(",", ":"))
                if not await guard.write(lambda: websocket.send_text(message)):
                    return
                if ev.item is not None:
                    metrics.delivered.labels("ws").inc()
                    metrics.delay.labels("ws").observe(max(0.0, time.time() - ev.item.emitted_at))
                if ev.kind == "lagged":
                    await guard.write(lambda: websocket.close(code=1013, reason="lagged: resume from the cursor"))
                    return
                if ev.kind == "closing":
                    await guard.write(lambda: websocket.close(code=1001, reason="the gateway is stopping"))
                    return

        async def until_disconnect() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return

        tasks = [asyncio.create_task(pump()), asyncio.create_task(until_disconnect())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
        finally:
            await feed.close()     # detaches, and ends the pump even if a library swallowed its cancellation
            await asyncio.wait(tasks, timeout=5)
            guard.linger()         # what is still buffered for the client must be read in time too
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    if not isinstance(exc, (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, OSError)):
                        log.warning("websocket stream ended with %r", exc)

    async def _deny(self, websocket: WebSocket, response: JSONResponse, code: int, reason: str) -> None:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=code, reason=reason[:120])

    async def ticket(self, request: Request) -> Response:
        try:
            entry = await self._entry(request.headers.get("authorization"), None, "token" in request.query_params)
        except Unauthorized as exc:
            return _problem(401, "unauthorized", str(exc))
        ticket, expires = self.access.mint_ticket(entry)
        return JSONResponse({"ticket": ticket, "expires_in": self.access.ticket_ttl_s,
                             "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
                             "token": entry.id, "scope": entry.scope.describe(),
                             "regions": entry.scope.readable_regions()},
                            headers={"Cache-Control": "no-store"})

    async def whoami(self, request: Request) -> Response:
        try:
            entry = await self._entry(request.headers.get("authorization"), request.query_params.get("ticket"),
                                "token" in request.query_params)
        except Unauthorized as exc:
            return _problem(401, "unauthorized", str(exc))
        return JSONResponse({"token": entry.id, "scope": entry.scope.describe(),
                             "regions": entry.scope.readable_regions()})

    async def _bearer_json(self, request: Request) -> tuple[TokenEntry, object] | Response:
        """(the bearer token's entry, the JSON body) of a request that changes something, or the 401/400 answer."""
        try:
            entry = await self._entry(request.headers.get("authorization"), None, "token" in request.query_params)
        except Unauthorized as exc:
            return _problem(401, "unauthorized", str(exc))
        try:
            return entry, json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return _problem(400, "bad_request", f"the body is not JSON: {exc}")

    async def dispose(self, request: Request) -> Response:
        """Record an officer's disposition of a derived alert (``connectors.gateway.dispositions``)."""
        got = await self._bearer_json(request)
        if isinstance(got, Response):
            return got
        entry, body = got
        if not isinstance(body, dict):
            return _problem(400, "bad_request", "the body must be a JSON object with `outcome` and an optional `note`")
        unknown = sorted(set(body) - {"outcome", "note"})
        if unknown:
            return _problem(400, "bad_request", f"unknown field(s) {', '.join(unknown)}: expected `outcome` and `note`")
        try:
            status, records = await self.ledger.dispose(entry, request.path_params["alert_id"], body.get("outcome"),
                                                        body.get("note"))
        except DispositionError as exc:
            return _problem(exc.status, exc.error, str(exc))
        return JSONResponse({"alert_id": request.path_params["alert_id"], "recorded": status == 201,
                             "dispositions": [json_ready(r) for r in records]}, status_code=status)

    async def heightened(self, request: Request) -> Response:
        """The command centre declares heightened mode (``connectors.gateway.control``)."""
        got = await self._bearer_json(request)
        if isinstance(got, Response):
            return got
        entry, body = got
        try:
            event = heightened_event(entry, body)
        except ControlError as exc:
            return _problem(exc.status, exc.error, str(exc))
        await self._bus.send_and_wait(self.names.prefix + topics.CONTROL, get_codec().encode("control", event),
                                      key=event["event_id"].encode())
        log.info("heightened mode declared by %s for %s, %s to %s, x%g", entry.id, ",".join(event["regions"]),
                 event["starts_at"].isoformat(), event["ends_at"].isoformat(), event["threshold_multiplier"])
        return JSONResponse(json_ready(event), status_code=201)

    async def end_heightened(self, request: Request) -> Response:
        """The command centre ends a heightened window early (``connectors.gateway.control.end_event``)."""
        got = await self._bearer_json(request)
        if isinstance(got, Response):
            return got
        entry, body = got
        name = request.path_params["window"]
        try:
            window = await self.ledger.window(name) if entry.scope.all and WINDOW_NAME.fullmatch(name) else None
            event = end_event(entry, window, name[:64], body)
        except (ControlError, DispositionError) as exc:
            return _problem(exc.status, exc.error, str(exc))
        await self._bus.send_and_wait(self.names.prefix + topics.CONTROL, get_codec().encode("control", event),
                                      key=event["event_id"].encode())
        log.info("heightened mode %s for %s ended by %s at %s", event["window_id"], ",".join(event["regions"]),
                 entry.id, event["ends_at"].isoformat())
        return JSONResponse(json_ready(event), status_code=201)

    async def health(self, request: Request) -> Response:
        ready = self.hub.ready.is_set() and self.ledger.ready.is_set() \
            and all(w.ready.is_set() for w in self.webhooks) \
            and len(self.webhooks) == len(self.webhook_specs)
        body = {"status": "ok" if ready else "starting", "live": {"ready": self.hub.ready.is_set(),
                                                                   "topics": list(self.hub.partitions)},
                "webhooks": {w.spec.name: w.status() for w in self.webhooks}}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def place_names(self, request: Request) -> Response:
        """Names of regions, ports and stations in Chinese and English, for the wall (from the reference data)."""
        return JSONResponse(reference_names(), headers={"Cache-Control": "max-age=3600"})

    async def wall(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def _build_app(self):
        app = Starlette(routes=[
            Route("/", self.wall),
            Route("/wall", self.wall),
            Route("/names.json", self.place_names),
            Route("/alerts/stream", self.stream),
            WebSocketRoute("/alerts/ws", self.websocket),
            Route("/auth/ticket", self.ticket, methods=["POST"]),
            Route("/alerts/{alert_id:str}/dispositions", self.dispose, methods=["POST"]),
            Route("/control/heightened", self.heightened, methods=["POST"]),
            Route("/control/heightened/{window:str}/end", self.end_heightened, methods=["POST"]),
            Route("/auth/whoami", self.whoami),
            Route("/healthz", self.health),
            Route("/metrics", self.metrics_endpoint),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ], lifespan=self._lifespan)
        return _SecurityHeaders(app)


#: a window's name in a path: its event id or its announcement's alert id (hex and dashes)
WINDOW_NAME = re.compile(r"[0-9A-Fa-f-]{1,64}")
_URL_SECRET = re.compile(r"((?:^|[?&])(?:token|ticket)=)[^&\s]*", re.IGNORECASE)


class _RedactUrlSecrets(logging.Filter):
    """The access log never keeps a ticket, nor a token a client wrongly put in a URL (it is refused anyway)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = args[:2] + (_URL_SECRET.sub(r"\1<redacted>", args[2]),) + args[3:]
        return True


def make_server(gateway: Gateway, host: str, port: int, log_level: str = "info"):
    """A uvicorn server for ``gateway`` that ends open streams with a ``closing`` event when it stops."""
    import uvicorn

    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactUrlSecrets) for f in access_log.filters):
        access_log.addFilter(_RedactUrlSecrets())

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            # Streams never end by themselves: tell them first, so uvicorn's graceful wait is short and
            # every subscriber gets the cursor to resume from on another gateway (or this one, restarted).
            gateway.hub.close_subscribers()
            await super().shutdown(sockets)

    from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    # The protocols hand each request its connection's transport, so that a subscriber that stops reading
    # can be aborted (guard.py): closing it would wait for its buffers to drain, which they never do.
    http = with_transport(import_from_string(HTTP_PROTOCOLS["auto"]))
    ws_base = import_from_string(WS_PROTOCOLS["auto"])
    ws = with_transport(ws_base) if ws_base is not None else "none"
    config = uvicorn.Config(gateway.app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=3, proxy_headers=False, server_header=False, http=http, ws=ws)
    return _Server(config)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, tokens_file: Path | None = None,
          topic_prefix: str = "", log_level: str = "info") -> None:
    """Run the gateway until SIGINT/SIGTERM."""
    gateway = Gateway(settings, tokens_file=tokens_file, topic_prefix=topic_prefix)
    make_server(gateway, host or settings.gateway_host, port or settings.gateway_port, log_level).run()
