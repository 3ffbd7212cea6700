"""The read-only schema registry (connectors/registry.py), proven with clients nobody here wrote: confluent-kafka's
``SchemaRegistryClient`` and ``AvroDeserializer`` decode records of every kind read from the topics, and
ClickHouse reads a topic's bytes with its ``AvroConfluent`` input format pointed at the registry.

The registry is `yrdbus schemas serve` (the sink serves the same beside its query endpoint), as a process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from conftest import free_port
from kit import synthetic
from kit.scripted import Script, _dt
from schemas import contract, topics
from schemas.codec import get_codec

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
#: kind -> the field that names a record
IDS = {"clearance": "event_id", "alert": "event_id", "case": "event_id", "control": "event_id",
       "derived_alert": "alert_id", "trend": "signal_id", "risk": "subject",
       "disposition": "disposition_id"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    prefix = f"reg{os.getpid()}."
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "YRDBUS_SCHEMA_REGISTRY_URL"}
    proc = subprocess.Popen([YRDBUS, "schemas", "serve", "--port", str(port), "--prefix", prefix], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/subjects", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the registry did not answer"
            time.sleep(0.2)
    yield prefix, url
    proc.terminate()
    proc.wait(20)


def records_of_every_kind() -> dict[str, list[dict]]:
    out = {kind: synthetic.records(kind, 3, seed=17) for kind in ("clearance", "alert", "case", "derived_alert",
                                                                  "trend", "risk", "disposition")}
    s = Script(3)
    rec = s.control(["SH", "ZJ"], 1_510_000_000_000, 1_510_600_000_000)
    out["control"] = [{k: (_dt(v) if k in ("occurred_at", "starts_at", "ends_at") else v) for k, v in rec.items()}]
    return out


def topic_of(prefix: str, kind: str, rec: dict) -> str:
    if kind in contract.SOURCE_KINDS:
        return prefix + topics.source(rec["region"], kind)
    return prefix + {"control": topics.CONTROL, "derived_alert": topics.DERIVED_ALERTS, "trend": topics.TRENDS,
                     "risk": topics.RISK_SCORES, "disposition": topics.DISPOSITIONS}[kind]


def test_confluent_kafkas_registry_client_decodes_records_of_every_kind_read_from_the_topics(kafka, registry):
    prefix, url = registry
    codec = get_codec()
    sent = records_of_every_kind()
    assert set(sent) == set(contract.KINDS)
    by_topic: dict[str, list[tuple[str, dict]]] = {}
    for kind, recs in sent.items():
        for rec in recs:
            by_topic.setdefault(topic_of(prefix, kind, rec), []).append((kind, rec))
    topics.create_missing(kafka.bootstrap, sorted(by_topic))
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    for topic, items in by_topic.items():
        for kind, rec in items:
            p.produce(topic, value=codec.encode(kind, rec), partition=0)
    assert p.flush(30) == 0

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": url}))
    for topic, items in by_topic.items():
        c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"reg-{topic}", "enable.auto.commit": False})
        c.assign([TopicPartition(topic, 0, 0)])
        got, deadline = [], time.monotonic() + 30
        while len(got) < len(items) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(deserialize(m.value(), SerializationContext(topic, MessageField.VALUE)))
        c.close()
        kind = items[0][0]
        field = IDS[kind]
        assert [str(g[field]) for g in got] == [str(rec[field]) for _, rec in items], topic
        for g, (_, rec) in zip(got, items):   # every field, not only the id (times come back as datetimes)
            assert rec.keys() <= g.keys(), (topic, set(rec) - set(g))      # and the fields a default fills
            for name in ("region", "kind", "severity", "subject", "stage", "score"):
                if name in rec:
                    assert g[name] == rec[name], (topic, name)


def test_clickhouse_reads_a_topics_bytes_with_avroconfluent_pointed_at_the_registry(kafka, registry, tmp_path,
                                                                                      clickhouse_url):
    from connectors.store import client as store

    prefix, url = registry
    codec = get_codec()
    sent = records_of_every_kind()
    client = store.get_client(clickhouse_url)      # the engine of this test process (chDB: one per process)
    for kind, field in (("clearance", "event_id"), ("derived_alert", "alert_id"), ("control", "event_id")):
        data = tmp_path / f"{kind}.bin"
        data.write_bytes(b"".join(codec.encode(kind, rec) for rec in sent[kind]))   # as a topic holds them
        rows = client.query(f"SELECT {field} FROM file('{data}', 'AvroConfluent') "
                            f"SETTINGS format_avro_schema_registry_url = '{url}'").result_rows
        assert [str(r[0]) for r in rows] == [str(rec[field]) for rec in sent[kind]], kind


def test_the_registry_answers_as_confluents_does_and_refuses_writes(registry):
    prefix, url = registry

    def get(path: str):
        try:
            with urllib.request.urlopen(url + path, timeout=5) as resp:
                return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], json.loads(exc.read())

    status, ctype, subjects = get("/subjects")
    assert status == 200 and ctype.startswith("application/vnd.schemaregistry.v1+json")
    assert f"{prefix}alerts.derived-value" in subjects and f"{prefix}border.SH.clearance-value" in subjects
    rows = [r for r in contract.load_ids() if r["name"] == contract.full_name("derived_alert")]
    assert get(f"/subjects/{prefix}alerts.derived-value/versions")[2] == sorted(r["version"] for r in rows)
    latest = get(f"/subjects/{prefix}alerts.to.AH-value/versions/latest")[2]
    newest = max(rows, key=lambda r: r["version"])
    assert latest["id"] == newest["id"] and json.loads(latest["schema"]) == json.loads(contract.read_history(newest))
    assert get("/schemas/ids/999999") == (404, "application/vnd.schemaregistry.v1+json",
                                          {"error_code": 40403, "message": "Schema 999999 not found."})
    assert get("/subjects/nothing-value/versions")[2]["error_code"] == 40401
    assert get("/config")[2] == {"compatibilityLevel": "BACKWARD"}
    req = urllib.request.Request(url + f"/subjects/{prefix}trends-value/versions", method="POST",
                                 data=json.dumps({"schema": '"string"'}).encode(),
                                 headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 422 and json.loads(refused.value.read())["error_code"] == 42205


def test_kcat_piped_into_codec_decode_gives_every_record_of_a_topic(kafka, unique):
    """`kcat -C -f '%R%s'` (each value after its length) into `yrdbus codec decode --framing kcat`: one JSON
    line a record, every one, in order; a cut stream is said, with the record it cut."""
    codec = get_codec()
    recs = synthetic.records("alert", 5, seed=23)
    topic = f"{unique}.border.SH.alert"
    topics.create_missing(kafka.bootstrap, [topic])
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    for rec in recs:
        p.produce(topic, value=codec.encode("alert", rec), partition=0)
    p.produce(topic, value=None, partition=0)            # a tombstone reads as null
    assert p.flush(30) == 0
    raw = subprocess.run(["kcat", "-b", kafka.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
                          "-f", "%R%s"], capture_output=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    out = subprocess.run([YRDBUS, "codec", "decode", "--framing", "kcat"], input=raw.stdout, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert [json.loads(line)["event_id"] for line in lines[:-1]] == [r["event_id"] for r in recs]
    assert lines[-1] == "null"
    cut = subprocess.run([YRDBUS, "codec", "decode", "--framing", "kcat"], input=raw.stdout[:-30],
                         capture_output=True, timeout=60)
    assert cut.returncode == 1 and b"record 5:" in cut.stderr, cut.stderr
