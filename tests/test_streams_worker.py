"""The stream layer on the real broker: scripted incidents through `yrdbus worker` processes.

Each test publishes contract events (kit.scripted, following docs/scenarios.md) to a private
copy of the bus (a unique topic prefix), runs real worker processes against the session's broker,
and reads what they derived from the output topics.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kit.faults import Proc
from kit.scripted import HOUR, Script, background, incidents
from schemas import topics
from schemas.codec import get_codec
from streams import derived
from streams.app import StreamsConfig, ensure_topics, subject_partition
from streams.evaluate import read_alerts_topic, score

T0 = 1_496_304_000_000  # 2017-06-01T08:00Z
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def publish(bootstrap: str, records) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for topic, key, value in records:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0


class WorkerProcess(Proc):
    """`yrdbus worker` on the session's broker under a private topic prefix, its data and logs (one per start)
    in its own folder. Its subject stage has as many partitions as the source topics (`yrdbus worker`'s default),
    so a clearance the stations keyed by subject is read in place: with another number every clearance is
    forwarded through streams.subjects and read twice (some 40 % more CPU for the worker and the broker)."""

    def __init__(self, kafka, tmp: Path, prefix: str, app_id: str, partitions: int = topics.DEFAULT_PARTITIONS,
                 metrics_port: int | None = None):
        self.kafka, self.prefix, self.app_id = kafka, prefix, app_id
        self.partitions, self.metrics_port = partitions, metrics_port
        self.dir = tmp / f"worker-{app_id}"
        metrics = ["--metrics-port", str(metrics_port)] if metrics_port else []
        argv = [YRDBUS, "worker", "--prefix", prefix, "--app-id", app_id, "--partitions", str(partitions),
                "--data-dir", str(self.dir / "data"), *metrics]
        env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap, "YRDBUS_VAR_DIR": str(self.dir)}
        super().__init__("worker", argv, env, self.dir)

    def stop(self, sig=signal.SIGTERM) -> None:
        """SIGTERM (a clean stop; SIGKILL after 20 s) or, given ``signal.SIGKILL``, a kill."""
        if sig == signal.SIGKILL:
            self.kill()
        else:
            super().stop(20.0)
        self.proc = None

    def tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]


@pytest.fixture
def workers(kafka, tmp_path):
    made: list[WorkerProcess] = []

    def make(prefix: str, app_id: str, **options) -> WorkerProcess:
        w = WorkerProcess(kafka, tmp_path, prefix, app_id, **options)
        made.append(w)
        return w
    yield make
    for w in made:
        w.stop(signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, worker: WorkerProcess | None = None, detail=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
            pytest.fail(f"worker exited with {worker.proc.returncode} while waiting for {what}:\n{worker.tail()}")
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({detail()})" if detail else "")
                + (f":\n{worker.tail()}" if worker else ""))


def missing(bootstrap: str, prefix: str, truth: list[dict]) -> str:
    r = score(truth, read_alerts_topic(bootstrap, prefix + topics.DERIVED_ALERTS))
    return "missed: " + ", ".join(f"{s['scenario_id']} {row['expected_alert_kind']}" for s in r["scenarios"]
                                  for row in s["rows"] if not row["matched"])


def records_on(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None, list]]:
    """(key, value, headers) of every record of ``topic``, partition by partition; none when it is not there."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        out = []
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi <= lo:
                continue
            c.assign([TopicPartition(topic, p, lo)])
            while True:
                m = c.poll(5)
                assert m is not None, f"{topic}[{p}] stopped before offset {hi}"
                if m.error():
                    continue
                out.append((m.key(), m.value(), m.headers() or []))
                if m.offset() + 1 >= hi:
                    break
        return out
    finally:
        c.close()


def keys_on(bootstrap: str, topic: str) -> list[str]:
    return [k.decode() for k, _, _ in records_on(bootstrap, topic)]


def scripted(seed: int = 7) -> Script:
    s = Script(seed)
    incidents(s, T0)
    background(s, T0 - 2 * HOUR, 84, 8)
    return s


@pytest.fixture(scope="module")
def scripted_run(kafka, tmp_path_factory):
    """The scripted incidents through one worker; shared by the tests that read its results."""
    prefix = f"t{uuid.uuid4().hex[:6]}."
    script = scripted()
    cfg = StreamsConfig(bootstrap=kafka.bootstrap, prefix=prefix)
    ensure_topics(cfg)
    publish(kafka.bootstrap, script.encoded(get_codec(), prefix))
    w = WorkerProcess(kafka, tmp_path_factory.mktemp("scripted"), prefix, f"{prefix}a")
    w.start()
    try:
        wait_for(lambda: score(script.truth, read_alerts_topic(kafka.bootstrap, prefix + topics.DERIVED_ALERTS))
                 ["recall"] == 1.0, 90, "every scripted incident", w,
                 lambda: missing(kafka.bootstrap, prefix, script.truth))
        time.sleep(4)   # anything raised late would be a false alert: give it the time to show
        alerts = read_alerts_topic(kafka.bootstrap, prefix + topics.DERIVED_ALERTS)
    finally:
        w.stop()
    return {"prefix": prefix, "script": script, "alerts": alerts, "kafka": kafka}


def test_scripted_incidents_raise_exactly_the_expected_alerts(scripted_run):
    result = score(scripted_run["script"].truth, scripted_run["alerts"])
    assert result["recall"] == 1.0, result["scenarios"]
    assert result["false_alerts"] == [] and result["precision"] == 1.0
    kinds = collections.Counter(a["kind"] for a in scripted_run["alerts"])
    assert kinds == {"CROSS_REGION_HIT": 2, "PORT_SHOPPING": 1, "DOCUMENT_FRAUD_SPREAD": 1, "TREND_RISING": 2,
                     "SYSTEMIC_ESCALATION": 1, "TRANSIT_OVERSTAY": 1, "TRANSIT_EXIT_TO_ORIGIN": 1,
                     "TRANSIT_OUT_OF_AREA": 1, "CONVEYANCE_DIVERTED": 1, "HEIGHTENED_MODE": 1, "BROADCAST": 1}
    assert all(a["rule_set_version"] and a["rule_id"] for a in scripted_run["alerts"])


def test_every_derived_alert_is_routed_to_each_region_that_must_act_or_be_informed(scripted_run):
    boot, prefix = scripted_run["kafka"].bootstrap, scripted_run["prefix"]
    routed = {r: collections.Counter(keys_on(boot, prefix + topics.routed_alerts(r))) for r in ("SH", "JS", "ZJ", "AH")}
    for a in scripted_run["alerts"]:
        want = set(derived.recipients(a))
        got = {r for r, ids in routed.items() if ids[a["alert_id"]]}
        assert got == want, (a["kind"], a["summary"])
    assert sum(sum(c.values()) for c in routed.values()) == sum(len(derived.recipients(a))
                                                                for a in scripted_run["alerts"])


def test_replaying_the_same_input_from_the_start_gives_the_same_alerts(scripted_run, workers):
    boot, prefix = scripted_run["kafka"].bootstrap, scripted_run["prefix"]
    first = sorted(a["alert_id"] for a in scripted_run["alerts"])
    w = workers(prefix, f"{prefix}replay")      # a new group: reads every source topic from the start
    w.start()
    wait_for(lambda: len(keys_on(boot, prefix + topics.DERIVED_ALERTS)) >= 2 * len(first), 90, "the replay", w)
    time.sleep(3)
    w.stop()
    ids = collections.Counter(keys_on(boot, prefix + topics.DERIVED_ALERTS))
    assert sorted(ids) == first and set(ids.values()) == {2}


def test_records_a_worker_was_not_delivered_are_read_again_in_order_with_their_headers(kafka):
    """streams.faust_workarounds: what the stages read when Faust delivers a partition's records from past a run."""
    from faust.types import TP
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams import faust_workarounds as catchup

    topic = f"c{uuid.uuid4().hex[:6]}.streams.subjects"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=1,
                  headers=[("yrd-kind", b"clearance"), ("yrd-source", f"s{i}".encode())])
    p.produce(topic, key=b"other", value=b"other", partition=0)
    assert p.flush(30) == 0

    got = catchup.read_range({"bootstrap.servers": kafka.bootstrap}, TP(topic, 1), 3, 7, timeout=30)
    assert [e.message.offset for e in got] == [3, 4, 5, 6]
    assert [(e.key, e.value) for e in got] == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(3, 7)]
    assert got[0].headers == [("yrd-kind", b"clearance"), ("yrd-source", b"s3")]
    assert got[0].message.tp == TP(topic, 1) and got[0].message.partition == 1 and got[0].message.timestamp > 1e9
    # records that are not there (yet) are not waited for forever: the worker stops instead of skipping them
    with pytest.raises(catchup.CatchUpError, match=r"records 8\.\.11"):
        catchup.read_range({"bootstrap.servers": kafka.bootstrap}, TP(topic, 1), 8, 12, timeout=3)


def test_a_group_starts_a_partition_at_its_commit_or_with_nothing_committed_at_its_earliest_record(kafka):
    """streams.faust_workarounds.read_committed: where a worker's group starts reading each partition, the offset a
    record delivered past it had records dropped before it from."""
    from faust.types import TP
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams import faust_workarounds as catchup

    topic = f"c{uuid.uuid4().hex[:6]}.border.SH.case"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for i in range(6):
        p.produce(topic, value=f"v{i}".encode(), partition=i % 2)
    assert p.flush(30) == 0
    # records before the first one kept (retention, deleted records) are not waited for
    for fut in admin.delete_records([TopicPartition(topic, 1, 2)]).values():
        fut.result(30)
    group = f"g{uuid.uuid4().hex[:6]}"
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    coordinator = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                   KafkaError.COORDINATOR_LOAD_IN_PROGRESS}
    while True:   # the group coordinator of a young broker is not ready at once: ask again
        try:
            c.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
            break
        except KafkaException as exc:
            if exc.args[0].code() not in coordinator or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    c.close()
    conf = {"bootstrap.servers": kafka.bootstrap}
    got = catchup.read_committed(conf, group, [TP(topic, 0), TP(topic, 1), TP(topic, 2)])
    assert got == {TP(topic, 0): 2, TP(topic, 1): 2, TP(topic, 2): 0}


def test_a_clearance_in_its_subjects_partition_is_read_in_place_and_one_elsewhere_is_forwarded(kafka, workers):
    """The stations' murmur2 partitioner puts a clearance where the subject stage keeps its subject: the stage reads
    it there. A clearance in another partition goes through streams.subjects first. Both are processed once."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from conftest import free_port
    from connectors.publisher import StationPublisher
    from kit import synthetic

    prefix = f"d{uuid.uuid4().hex[:6]}."
    ensure_topics(StreamsConfig(kafka.bootstrap, prefix=prefix))
    recs = synthetic.records("clearance", 300, seed=7)
    placed, misplaced = recs[:200], recs[200:]
    pub = StationPublisher(kafka.bootstrap, topic_prefix=prefix)
    for r in placed:
        pub.publish("clearance", r)
    assert pub.flush(30) == 0
    codec = get_codec()
    p = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for r in misplaced:   # the partition after the subject's
        home = subject_partition(r["subject"].encode(), topics.DEFAULT_PARTITIONS)
        p.produce(prefix + topics.source(r["region"], "clearance"), key=r["subject"].encode(),
                  value=codec.encode("clearance", r), partition=(home + 1) % topics.DEFAULT_PARTITIONS)
    assert p.flush(30) == 0

    port = free_port()
    worker = workers(prefix, prefix + "w", partitions=topics.DEFAULT_PARTITIONS, metrics_port=port)
    worker.start()

    def counts() -> dict[str, float]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        got: dict[str, float] = collections.Counter()
        for fam in text_string_to_metric_families(text):
            if fam.name == "yrdbus_streams_events_in":
                for s in fam.samples:
                    if s.name.endswith("_total") and s.labels["topic"].startswith(prefix):
                        got[s.labels["stage"]] += s.value
        return got

    try:
        got = wait_for(lambda: (c := counts()).get("subjects", 0) >= 300 and c, 180, "300 clearances processed",
                       worker, detail=lambda: dict(counts()))
        time.sleep(2)   # nothing more comes
        got = counts()
    finally:
        worker.stop()
    assert got["clearances"] == 200, got    # read in place
    assert got["rekey"] == 100, got         # forwarded to streams.subjects
    assert got["subjects"] == 300, got      # each processed once by the subject stage
