"""A read-only schema registry: the Confluent Schema Registry API over the project's committed schema ids.

Every value on the bus is Avro in the Confluent framing (a magic byte and a schema id from
``schemas/ids.json``). Tools nobody here wrote resolve those ids through a registry: confluent-kafka's
``SchemaRegistryClient`` and ``AvroDeserializer``, Kafka Connect, ClickHouse's ``AvroConfluent`` format,
kcat built with Avro. This serves what they read, from the committed files, and changes nothing:

- ``GET /schemas/ids/{id}`` (and ``/schemas/ids/{id}/versions``, ``/schemas/types``);
- ``GET /subjects``: ``<topic>-value`` of every topic of the bus (Confluent's topic-name strategy), the topic
  prefix of this process included; ``GET /subjects/{s}/versions`` and ``/subjects/{s}/versions/{v|latest}``
  (``/schema`` for the bare schema);
- ``GET /config`` (BACKWARD, what ``yrdbus schemas check`` enforces both ways) and ``GET /mode`` (READONLY).

A write (registering, deleting, changing the configuration) is refused as a registry in read-only mode
refuses it (422, error code 42205): new versions come from ``yrdbus schemas register`` and a commit. Errors
are the registry's: ``{"error_code": 40401, "message": ...}``. The sink serves it beside its query endpoint
when ``YRDBUS_SCHEMA_REGISTRY_URL`` does not name a registry of its own (``YRDBUS_SCHEMA_REGISTRY_PORT``,
8081); ``yrdbus schemas serve`` serves it alone.
"""
from __future__ import annotations

import json
import threading
import time

from schemas import contract, topics

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


class Catalogue:
    """Subjects, versions and schema texts of the committed id table, for the topics under ``prefix``."""

    def __init__(self, prefix: str = ""):
        rows = contract.load_ids()
        self.texts: dict[int, str] = {r["id"]: contract.read_history(r) for r in rows}
        by_name: dict[str, list[dict]] = {}
        for r in rows:
            by_name.setdefault(r["name"], []).append(r)
        self.subjects: dict[str, list[dict]] = {}
        for topic, kind in value_kinds(prefix).items():
            versions = sorted(by_name.get(contract.full_name(kind), []), key=lambda r: r["version"])
            if versions:
                self.subjects[f"{topic}-value"] = versions

    def version(self, subject: str, version: str) -> dict | None:
        versions = self.subjects[subject]
        if version in ("latest", "-1"):
            return versions[-1]
        return next((r for r in versions if str(r["version"]) == version), None)


def value_kinds(prefix: str = "") -> dict[str, str]:
    """Topic -> the kind of event its values are, for every topic of the bus that carries Avro events."""
    out = {}
    for spec in topics.definitions(prefix):
        name = spec.name[len(prefix):] if spec.name.startswith(prefix) else spec.name
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "border" and parts[2] in contract.SOURCE_KINDS:
            out[spec.name] = parts[2]
        elif name == topics.CONTROL:
            out[spec.name] = "control"
        elif name == topics.DERIVED_ALERTS or name.startswith("alerts.to."):
            out[spec.name] = "derived_alert"
        elif name == topics.TRENDS:
            out[spec.name] = "trend"
        elif name == topics.RISK_SCORES:
            out[spec.name] = "risk"
    return out


def build_app(prefix: str = ""):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    cat = Catalogue(prefix)

    def reply(body, status: int = 200) -> JSONResponse:
        return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)

    def error(code: int, message: str, status: int) -> JSONResponse:
        return reply({"error_code": code, "message": message}, status)

    def subject_or_404(request):
        subject = request.path_params["subject"]
        return subject if subject in cat.subjects else None

    async def root(request):
        return reply({})

    async def subjects(request):
        return reply(sorted(cat.subjects))

    async def versions(request):
        subject = subject_or_404(request)
        if subject is None:
            return error(40401, f"Subject '{request.path_params['subject']}' not found.", 404)
        return reply([r["version"] for r in cat.subjects[subject]])

    def _version(request):
        subject = subject_or_404(request)
        if subject is None:
            return None, error(40401, f"Subject '{request.path_params['subject']}' not found.", 404)
        row = cat.version(subject, request.path_params["version"])
        if row is None:
            return None, error(40402, f"Version {request.path_params['version']} not found.", 404)
        return (subject, row), None

    async def version(request):
        found, err = _version(request)
        if err:
            return err
        subject, row = found
        return reply({"subject": subject, "version": row["version"], "id": row["id"], "schemaType": "AVRO",
                      "schema": cat.texts[row["id"]]})

    async def version_schema(request):
        found, err = _version(request)
        if err:
            return err
        return JSONResponse(json.loads(cat.texts[found[1]["id"]]), media_type=MEDIA_TYPE)

    def _id(request) -> int | None:
        try:
            sid = int(request.path_params["id"])
        except ValueError:
            return None
        return sid if sid in cat.texts else None

    async def by_id(request):
        sid = _id(request)
        if sid is None:
            return error(40403, f"Schema {request.path_params['id']} not found.", 404)
        return reply({"schemaType": "AVRO", "schema": cat.texts[sid]})

    async def id_versions(request):
        sid = _id(request)
        if sid is None:
            return error(40403, f"Schema {request.path_params['id']} not found.", 404)
        return reply([{"subject": s, "version": r["version"]} for s, rows in sorted(cat.subjects.items())
                      for r in rows if r["id"] == sid])

    async def types(request):
        return reply(["AVRO"])

    async def config(request):
        if "subject" in request.path_params and request.path_params["subject"] not in cat.subjects:
            return error(40401, f"Subject '{request.path_params['subject']}' not found.", 404)
        return reply({"compatibilityLevel": "BACKWARD"})

    async def mode(request):
        return reply({"mode": "READONLY"})

    async def read_only(request):
        return error(42205, "This registry is read-only: it serves the project's committed schema ids "
                            "(schemas/ids.json); a new version is registered with `yrdbus schemas register` "
                            "and a commit.", 422)

    writes = ["POST", "PUT", "DELETE"]
    routes = [
        Route("/", root, methods=["GET"]),
        Route("/subjects", subjects, methods=["GET"]),
        Route("/subjects/{subject:str}/versions", versions, methods=["GET"]),
        Route("/subjects/{subject:str}/versions/{version:str}", version, methods=["GET"]),
        Route("/subjects/{subject:str}/versions/{version:str}/schema", version_schema, methods=["GET"]),
        Route("/schemas/ids/{id:str}", by_id, methods=["GET"]),
        Route("/schemas/ids/{id:str}/versions", id_versions, methods=["GET"]),
        Route("/schemas/types", types, methods=["GET"]),
        Route("/config", config, methods=["GET"]),
        Route("/config/{subject:str}", config, methods=["GET"]),
        Route("/mode", mode, methods=["GET"]),
        # what a writing client sends, answered as a registry in read-only mode answers it
        Route("/subjects/{subject:str}", read_only, methods=writes),
        Route("/subjects/{subject:str}/versions", read_only, methods=writes),
        Route("/subjects/{subject:str}/versions/{version:str}", read_only, methods=writes),
        Route("/config", read_only, methods=writes),
        Route("/config/{subject:str}", read_only, methods=writes),
        Route("/mode", read_only, methods=writes),
    ]
    return Starlette(routes=routes)


class RegistryServer:
    """``build_app`` served with uvicorn in a background thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8081, prefix: str = ""):
        self.host, self.port, self.app = host, port, build_app(prefix)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "RegistryServer":
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                                     access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="schema-registry", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the schema registry could not listen on {self.host}:{self.port} "
                                   f"(port in use? set YRDBUS_SCHEMA_REGISTRY_PORT)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
