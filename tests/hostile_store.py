"""A store with something to steal, behind a live query endpoint: the stage of the hostile-query tests.

Each region's rows carry a marker of their own (``MARK-<REGION>-<nonce>``) in every table an analyst can
read: clearances (and, through their views, subject_events), alerts, cases (and cases_current), derived
alerts, trends, risk scores and dead letters. A secret file sits beside the store, and a sandbox folder is
where hostile statements try to write. The oracles look at effects: a marker of another region in an
answer, the secret in an answer or an error, a file in the sandbox, a row more or less in the canary.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx2

from connectors.store import Target, migrate
from connectors.store.queryserver import QueryServer, hash_password
from schemas.reference import REGIONS

USERS = {"rcc": "rcc-pw", "sh": "sh-pw"}


@dataclass
class Stage:
    client: object
    db: str
    port: int
    nonce: str
    secret: str
    secret_file: Path
    sandbox: Path
    server: QueryServer

    def marker(self, region: str) -> str:
        return f"MARK-{region}-{self.nonce}"

    def post(self, sql: str, user: str = "rcc", params: dict | None = None, timeout: float = 60.0) -> httpx2.Response:
        return httpx2.post(f"http://127.0.0.1:{self.port}/", params=params or {}, content=sql.encode("utf-8", "surrogatepass"),
                           auth=(user, USERS[user]), timeout=timeout)

    def foreign_markers(self, text: str, region: str = "SH") -> list[str]:
        """Markers of regions other than ``region`` that ``text`` shows."""
        return [r for r in REGIONS if r != region and self.nonce in text and f"MARK-{r}-{self.nonce}" in text]

    def sandbox_files(self) -> list[str]:
        return sorted(str(p) for p in self.sandbox.rglob("*"))

    def canary(self) -> tuple:
        return self.client.query(f"SELECT count(), sum(n) FROM {self.db}.canary").result_rows[0]


def build(client, clickhouse_url: str, tmp_path: Path, port: int, **server_options) -> Stage:
    db = f"hostile_{uuid.uuid4().hex[:8]}"
    migrate(client, Target(database=db))
    nonce = uuid.uuid4().hex[:10]
    at = datetime(2017, 6, 5, 8, 0, tzinfo=timezone.utc)
    for r in REGIONS:
        mark = f"MARK-{r}-{nonce}"
        client.insert(f"{db}.clearances", [[str(uuid.uuid4()), r, "a" * 64, at, mark]],
                      column_names=["event_id", "region", "subject", "occurred_at", "conveyance_id"])
        client.insert(f"{db}.alerts", [[str(uuid.uuid4()), r, "b" * 64, at, mark]],
                      column_names=["event_id", "region", "subject", "occurred_at", "description"])
        client.insert(f"{db}.cases", [[str(uuid.uuid4()), r, mark, ["c" * 64], at]],
                      column_names=["event_id", "region", "case_id", "subjects", "occurred_at"])
        client.insert(f"{db}.derived_alerts", [[f"alert-{r}-{nonce}", [r], [], "d" * 64, at, at, mark]],
                      column_names=["alert_id", "must_act", "inform", "subject", "occurred_at", "emitted_at", "summary"])
        client.insert(f"{db}.trends", [[f"sig-{r}-{nonce}", r, at, at, mark]],
                      column_names=["signal_id", "region", "window_start", "window_end", "rule_id"])
        client.insert(f"{db}.risk_scores", [[mark, r, at]], column_names=["subject", "region", "occurred_at"])
        client.insert(f"{db}.dead_letters", [[at, f"dlq.border.{r}.clearance", f"border.{r}.clearance", mark, mark]],
                      column_names=["received_at", "topic", "source_topic", "origin", "value"])
    client.command(f"CREATE TABLE {db}.canary (n UInt32) ENGINE = MergeTree ORDER BY n")
    client.insert(f"{db}.canary", [[i] for i in range(10)], column_names=["n"])
    secret = f"SECRET-{uuid.uuid4().hex}"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret + "\n")
    for name in ("template.txt", "row.txt", "schema.capnp", "schema.proto"):
        (tmp_path / name).write_text(f"{secret} ${{data}}\n")
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    users = {"rcc": hash_password(USERS["rcc"]),
             "sh": {"hash": hash_password(USERS["sh"]), "regions": ["SH"], "max_concurrent_queries": 2}}
    server = QueryServer(clickhouse_url[len("chdb://"):], port=port, users=users, database=db,
                         **{"max_execution_time": 10, **server_options}).start()
    return Stage(client, db, port, nonce, secret, secret_file, sandbox, server)


def teardown(stage: Stage) -> None:
    stage.server.stop()
    stage.client.command(f"DROP DATABASE IF EXISTS {stage.db} SYNC")


def in_sandbox(stage: Stage, name: str = "out.tsv") -> str:
    return os.path.join(stage.sandbox, name)
