"""Kafka security on the real broker: SCRAM-SHA-512 over TLS, one principal per station and service, ACLs.

Every test runs against the session's private secured broker (``secure_kafka``: ``yrdbus stack up
--secure`` on free ports, the bus's topics applied by admin). A station writes only its own region's
topics and reads nothing; a wrong password, a plaintext client and a client that does not trust the
broker's CA are refused; the sink and a stream worker do their whole job with their own principals.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.store import Target, migrate
from connectors.store.sink import Sink
from kit.scripted import HOUR, Script, background, incidents
from schemas import topics
from schemas.codec import get_codec
from schemas.examples import example
from schemas.kafka_config import kafka_security
from streams.evaluate import score
from streams.events import plain
from yrdbus import security

ROOT = Path(__file__).resolve().parents[1]
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
T0 = 1_496_304_000_000  # 2017-06-01T08:00Z


def conf(stack, principal: str, **extra) -> dict:
    return {"bootstrap.servers": stack.bootstrap(), **kafka_security(stack.client_settings(principal)),
            "log_level": 0, **extra}


def produce(stack, principal: str, topic: str, value: bytes, key: bytes = b"k") -> KafkaError | None:
    """Produce one record as ``principal``; the delivery error, or None when the broker took it."""
    outcome: list = []
    p = Producer(conf(stack, principal, **{"enable.idempotence": True, "message.timeout.ms": 15000}))
    p.produce(topic, value, key=key, on_delivery=lambda err, msg: outcome.append(err))
    p.flush(30)
    assert outcome, "no delivery report within 30 s"
    return outcome[0]


def read_all(stack, principal: str, topic: str, timeout: float = 20.0) -> list:
    """Every record of ``topic`` (all partitions, no consumer group), read as ``principal``."""
    c = Consumer(conf(stack, principal, **{"group.id": f"unused-{uuid.uuid4().hex[:6]}",
                                           "enable.auto.commit": False}))
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        out = []
        for p in md.partitions:
            for attempt in range(10):   # a topic created a moment ago may not have its leader yet
                try:
                    lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    break
                except KafkaException:
                    time.sleep(0.5)
            else:
                raise AssertionError(f"{topic}[{p}] has no leader")
            if hi <= lo:
                continue
            c.assign([TopicPartition(topic, p, lo)])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                m = c.poll(1)
                if m is None or m.error():
                    continue
                out.append(m)
                if m.offset() + 1 >= hi:
                    break
        return out
    finally:
        c.close()


def clearance(region: str = "SH") -> dict:
    r = example("clearance")
    if region != "SH":
        from schemas.reference import ports_of

        port = ports_of(region)[0]
        r.update(region=region, port_code=port.code, station_id=port.station_id)
    r["event_id"] = str(uuid.uuid4())
    return r


# =========================================================================== stations
def test_station_writes_its_own_regions_topics(secure_kafka):
    rec = clearance("SH")
    err = produce(secure_kafka, "station-SH-PVG", "border.SH.clearance", get_codec().encode("clearance", rec),
                  key=rec["subject"].encode())
    assert err is None, err
    got = [m for m in read_all(secure_kafka, "admin", "border.SH.clearance")
           if get_codec().decode(m.value())[1]["event_id"] == rec["event_id"]]
    assert len(got) == 1


def test_station_denied_when_it_writes_another_regions_topic(secure_kafka):
    rec = clearance("JS")
    err = produce(secure_kafka, "station-SH-PVG", "border.JS.clearance", get_codec().encode("clearance", rec))
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # nor the derived topics, nor another region's dead letters
    for topic in (topics.DERIVED_ALERTS, topics.routed_alerts("SH"), "dlq.border.JS.clearance"):
        err = produce(secure_kafka, "station-SH-PVG", topic, b"forged")
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, err)
    assert not [m for m in read_all(secure_kafka, "admin", "border.JS.clearance")
                if m.value() == get_codec().encode("clearance", rec)]


def read_refusals(stack, principal: str, topic: str, group: str, expect: set[int]) -> set[int]:
    """Error codes a consumer of ``principal`` gets when it tries to read ``topic`` (which holds a record),
    polled until every code in ``expect`` has come or 20 s have passed."""
    assert produce(stack, "admin", topic, b"something to read") is None
    c = Consumer(conf(stack, principal, **{"group.id": group, "enable.auto.commit": False}))
    try:
        codes: set[int] = set()
        md = c.list_topics(topic, timeout=10).topics[topic]
        if md.error is not None:        # not even allowed to see it: the metadata says so
            codes.add(md.error.code())
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions] or [TopicPartition(topic, p, 0)
                                                                          for p in range(4)])
        deadline = time.monotonic() + 20
        # the fetch's refusal comes first; the group's when the client looks up the group's coordinator
        while not expect <= codes and time.monotonic() < deadline:
            m = c.poll(1)
            if m is not None and m.error():
                codes.add(m.error().code())
            elif m is not None:
                pytest.fail(f"{principal} read a record of {m.topic()}")
        return codes
    finally:
        c.close()


def test_station_denied_reading_even_its_own_regions_topic(secure_kafka):
    refused = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
    codes = read_refusals(secure_kafka, "station-SH-PVG", "border.SH.clearance", "station-reader", refused)
    # the fetch is refused, and so is a consumer group
    assert refused <= codes, codes


def auth_errors(config: dict, seconds: float = 10.0) -> list[KafkaError]:
    """The errors a client with ``config`` reports while it tries to connect (its error callback)."""
    errors: list = []
    p = Producer({**config, "error_cb": errors.append})
    deadline = time.monotonic() + seconds
    while not errors and time.monotonic() < deadline:
        p.poll(0.5)
    return errors


def test_wrong_password_is_refused(secure_kafka):
    right = conf(secure_kafka, "station-SH-PVG")
    errors = auth_errors({**right, "sasl.password": "not-the-password"})
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION, errors
    assert "authentication failed" in errors[0].str().lower(), errors[0].str()
    errors = auth_errors({**right, "sasl.username": "station-XX-NOPE"})
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION, errors
    # and the right one is not
    assert auth_errors(right, seconds=3) == []


def test_plaintext_and_unauthenticated_clients_get_nothing(secure_kafka):
    errors: list = []
    plain = {"bootstrap.servers": secure_kafka.bootstrap(), "error_cb": errors.append, "log_level": 0}
    with pytest.raises(KafkaException):
        AdminClient(plain).list_topics(timeout=5)
    tls_only = {**plain, "security.protocol": "SSL",
                "ssl.ca.location": str(security.tls_files(secure_kafka.security_dir).ca_cert)}
    with pytest.raises(KafkaException):
        AdminClient(tls_only).list_topics(timeout=5)


def test_client_verifies_the_brokers_certificate(secure_kafka, tmp_path):
    host, port = "127.0.0.1", int(secure_kafka.bootstrap().split(":")[1])
    ca = security.tls_files(secure_kafka.security_dir).ca_cert
    # the project's CA: the handshake succeeds and the certificate names the address we dialled
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        cert = s.getpeercert()
        assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    # another CA (an impostor broker's, or a client that trusts the wrong one): refused by the client
    other = security.make_certificates(tmp_path / "other-ca")
    ctx = ssl.create_default_context(cafile=str(other.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host):
            pass
    # librdkafka with the wrong CA: no connection
    errors = auth_errors({**conf(secure_kafka, "svc-sink"), "ssl.ca.location": str(other.ca_cert)})
    assert errors and errors[0].code() in (KafkaError._SSL, KafkaError._TRANSPORT), errors
    assert "certificate verify failed" in errors[0].str(), errors[0].str()


def test_acls_and_users_applied_twice_change_nothing(secure_kafka):
    result = security.apply({"bootstrap.servers": secure_kafka.bootstrap(), **secure_kafka.admin_config()},
                            secure_kafka.passwords())
    assert result["created"] == 0 and result["deleted"] == 0
    assert result["kept"] == len([g for g in security.grants() if g.principal != security.ADMIN])


def test_station_publishes_an_export_with_yrdbus_publish(secure_kafka, tmp_path):
    export = tmp_path / "sh-pvg-clearances.jsonl"
    export.write_text((ROOT / "docs/examples/sh-pvg-clearances-2017-06-05.jsonl").read_text())
    env = {**os.environ, **secure_kafka.client_env("station-SH-PVG"), "YRDBUS_VAR_DIR": str(tmp_path),
           "YRDBUS_SUBJECT_KEY": "a-test-subject-key-of-32-bytes!!"}
    ok = subprocess.run([YRDBUS, "publish", "--file", str(export), "--region", "SH", "--json"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # a Jiangsu station's export published with a Shanghai station's credentials: every write refused
    js = tmp_path / "js-nkg-clearances.jsonl"
    rows = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
    js.write_text("".join(json.dumps({**r, "region": "JS", "port_code": "NKG", "station_id": "JS-NKG"}) + "\n"
                          for r in rows))
    denied = subprocess.run([YRDBUS, "publish", "--file", str(js), "--region", "JS", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0
    summary = json.loads(denied.stdout.splitlines()[0])
    assert summary["published"] == len(rows) and summary["delivered"] == 0 and summary["failed"] == len(rows)
    assert "authoriz" in denied.stderr.lower(), denied.stderr


# =========================================================================== services
def test_sink_stores_with_its_own_principal(secure_kafka, ch):
    client, db = ch
    migrate(client, Target(database=db))
    codec = get_codec()
    recs = [clearance(r) for r in ("SH", "JS", "ZJ", "AH")]
    for r in recs:
        station = f"station-{r['station_id']}"
        assert produce(secure_kafka, station, f"border.{r['region']}.clearance", codec.encode("clearance", r),
                       key=r["subject"].encode()) is None
    assert produce(secure_kafka, "station-AH-HFE", "border.AH.clearance", b"not avro") is None
    sink = Sink(bootstrap=secure_kafka.bootstrap(), client=client, database=db, batch_rows=100,
                kafka_config=kafka_security(secure_kafka.client_settings("svc-sink")))
    sink.run(idle_exit_s=5, duration=90)
    ids = {r[0] for r in client.query(f"SELECT toString(event_id) FROM {db}.clearances").result_rows}
    assert {r["event_id"] for r in recs} <= ids, sink.last_error
    # the undecodable record went to its dead-letter topic (written with the sink's principal) and was stored
    dead = client.query(f"SELECT count() FROM {db}.dead_letters WHERE value = 'not avro'").result_rows[0][0]
    assert dead >= 1, sink.last_error
    # ... and the sink's principal may not write source events
    err = produce(secure_kafka, "svc-sink", "border.SH.clearance", b"x")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.fixture
def private_copy(secure_kafka):
    """A topic prefix of this test's own on the secured broker, with the ACLs of the bus for it too."""
    prefix = f"w{uuid.uuid4().hex[:6]}."
    admin = {"bootstrap.servers": secure_kafka.bootstrap(), **secure_kafka.admin_config()}
    security.apply(admin, secure_kafka.passwords(), ["", prefix])
    env = {**os.environ, **secure_kafka.client_env("admin")}
    subprocess.run([YRDBUS, "topics", "apply", "--prefix", prefix], env=env, check=True, capture_output=True,
                   timeout=120)
    yield prefix
    security.apply(admin, secure_kafka.passwords(), "")


def test_stream_worker_derives_alerts_with_its_own_principal(secure_kafka, private_copy, tmp_path):
    prefix = private_copy
    script = Script(7)
    incidents(script, T0)
    background(script, T0 - 2 * HOUR, 84, 8)
    p = Producer(conf(secure_kafka, "admin", **{"enable.idempotence": True, "linger.ms": 5}))
    for topic, key, value in script.encoded(get_codec(), prefix):
        p.produce(topic, value, key=key)
        p.poll(0)
    assert p.flush(60) == 0
    env = {**os.environ, **secure_kafka.client_env("svc-streams"), "YRDBUS_VAR_DIR": str(tmp_path)}
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([YRDBUS, "worker", "--partitions", "2", "--data-dir", str(tmp_path / "data"),
                             "--prefix", prefix],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        result = {"recall": 0.0}
        while time.monotonic() < deadline and result["recall"] < 1.0:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(3)
            # the gateway's principal reads what the worker derived
            alerts = [plain("derived_alert", get_codec().decode(m.value())[1])
                      for m in read_all(secure_kafka, "svc-gateway", prefix + topics.DERIVED_ALERTS, timeout=5)]
            result = score(script.truth, alerts)
        missed = [row["expected_alert_kind"] for sc in result["scenarios"] for row in sc["rows"] if not row["matched"]]
        assert result["recall"] == 1.0, (missed, (tmp_path / "worker.log").read_text()[-4000:])
        assert read_all(secure_kafka, "svc-gateway", prefix + topics.routed_alerts("AH"), timeout=5)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert "AUTHORIZATION_FAILED" not in text and "AuthorizationFailed" not in text, text[-4000:]
    # the gateway's principal may read alerts only
    codes = read_refusals(secure_kafka, "svc-gateway", "border.SH.clearance", "yrdbus-gateway-t",
                          {KafkaError.TOPIC_AUTHORIZATION_FAILED})
    assert KafkaError.TOPIC_AUTHORIZATION_FAILED in codes, codes
