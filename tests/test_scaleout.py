"""Scale-out on one machine: a three-broker KRaft cluster, stream workers sharing its partitions.

The cluster is started as `yrdbus stack up --brokers 3` starts it (``KafkaStack(settings).up(brokers=3)``)
on free ports. The input (scripted incidents a-j over busy background traffic) is processed by a worker that
is joined by a second one part-way through (a rebalance mid-stream), and sunk. The reference is the answer of
event-time order: the two stages fed the same events without Kafka (tests/stage_pipeline.py; one worker on the
broker gives that answer in tests/test_streams_worker.py). The live alerts must be its very alerts, every event
published must be stored once, and every alert and case published must reach the regional stage.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.codec import get_codec
from stage_pipeline import in_order, live
from kit.scripted import HOUR, Script, background, incidents
from streams import derived
from streams.evaluate import last_versions, read_alerts_topic
from test_streams_worker import publish, records_on
from kit.faults import CaughtUp, Proc
from schemas import topics
from schemas.settings import Settings
from yrdbus.stack import KafkaStack

T0 = 1_496_304_000_000  # 2017-06-01T08:00Z
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
PARTITIONS = 4


def consecutive_free_ports(n: int) -> int:
    from kit.faults import free_port_run

    return free_port_run(n)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private three-broker KRaft cluster (every node broker and controller), as `stack up --brokers 3`."""
    settings = Settings(var_dir=tmp_path_factory.mktemp("cluster3"), kafka_bootstrap=None,
                        kafka_port=consecutive_free_ports(3), kafka_controller_port=consecutive_free_ports(3),
                        kafka_heap="384m", kafka_brokers=3)
    stack = KafkaStack(settings)
    stack.up(brokers=3, echo=lambda m: None)
    try:
        yield settings, stack
    finally:
        stack.down(echo=lambda m: None)


def script() -> Script:
    s = Script(11)
    incidents(s, T0)
    background(s, T0 - 2 * HOUR, 84, 40)
    return s


class Worker(Proc):
    """A `yrdbus worker` on the three-broker cluster, started at once; its log in ``folder/<name>-1.log``."""

    def __init__(self, bootstrap: str, prefix: str, folder: Path, name: str):
        argv = [YRDBUS, "worker", "--prefix", prefix, "--app-id", prefix + "streams", "--partitions",
                str(PARTITIONS), "--replication", "3", "--data-dir", str(folder / f"{name}-data")]
        env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": bootstrap, "YRDBUS_VAR_DIR": str(folder)}
        super().__init__(name, argv, env, folder)
        self.start()

    def tail(self, chars: int = 2500) -> str:
        return self.log_text()[-chars:]


def group_offsets(bootstrap: str, group: str, names: list[str]) -> tuple[int, int]:
    """(committed, end) summed over every partition of these topics, for the group."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in names if t in md for p in md[t].partitions]
        committed = sum(max(0, tp.offset) for tp in c.committed(tps, timeout=10))
        end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return committed, end
    except KafkaException:
        # a young three-broker cluster moves group coordinators about (NOT_COORDINATOR): ask again later
        return 0, 1
    finally:
        c.close()


def short_partitions(bootstrap: str, group: str, names: list[str]) -> list[str]:
    """The partitions of these topics whose committed offset is short of their end, as topic[p] committed/end
    (what a failure must name: which partition stalled, and whose it was)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in names if t in md for p in md[t].partitions]
        out = []
        for tp in c.committed(tps, timeout=10):
            end = c.get_watermark_offsets(tp, timeout=10)[1]
            if max(0, tp.offset) < end:
                out.append(f"{tp.topic}[{tp.partition}] {tp.offset}/{end}")
        return out
    except KafkaException as exc:
        return [f"(not known: {exc})"]
    finally:
        c.close()


def wait_until(predicate, timeout: float, what: str, workers: list[Worker]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        for w in workers:
            if not w.alive:
                pytest.fail(f"worker {w.name} exited while waiting for {what}:\n{w.tail()}")
        time.sleep(1.0)
    detail = getattr(predicate, "detail", None)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({detail()})" if detail else "")
                + ":\n" + "\n".join(w.tail() for w in workers))


def stage_inputs(prefix: str) -> dict[str, list[str]]:
    """What the stream workers read: the source topics and control, and their internal stage topics."""
    return {"sources": [prefix + t for t in topics.source_topics()] + [prefix + topics.CONTROL],
            "internal": [prefix + "streams.subjects", prefix + "streams.regional"]}


def settled(bootstrap: str, prefix: str, quiet: float = 15.0):
    """A predicate: everything read and committed (the internal topics: what they held once the sources were done,
    ``CaughtUp``), and no new derived alert for ``quiet`` seconds (what the regional stage judges on its watermark
    comes once its upstreams have gone idle: global_idle_seconds)."""
    last = {"count": -1, "since": time.monotonic()}
    inputs = stage_inputs(prefix)
    caught_up = CaughtUp(bootstrap, prefix + "streams", inputs["sources"], inputs["internal"])

    def check() -> bool:
        if not caught_up():
            return False
        count = len(read_alerts_topic(bootstrap, prefix + topics.DERIVED_ALERTS, 5))
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= quiet

    def detail() -> str:
        out = [f"{what} committed/end {group_offsets(bootstrap, prefix + 'streams', names)}"
               for what, names in stage_inputs(prefix).items()]
        short = [p for names in stage_inputs(prefix).values()
                 for p in short_partitions(bootstrap, prefix + "streams", names)]
        try:
            held = [sorted(f"{t.split('.', 1)[-1]}[{p}]" for t, p in m) for m in members(bootstrap, prefix + "streams")]
        except Exception as exc:  # noqa: BLE001 (a detail of a failure message)
            held = [f"(not known: {exc})"]
        return ("; ".join(out) + f"; derived alerts {last['count']}, unchanged for "
                f"{time.monotonic() - last['since']:.0f} s; short: {', '.join(short) or 'none'}; members hold {held}")
    check.detail = detail
    return check


def members(bootstrap: str, group: str) -> list[set[tuple[str, int]]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return [{(tp.topic, tp.partition) for tp in m.assignment.topic_partitions} for m in desc.members]


def sink_into(bootstrap: str, client, db: str, prefix: str) -> dict[str, tuple]:
    from connectors.store import Target, migrate
    from connectors.store.sink import Sink

    migrate(client, Target(database=db))
    Sink(bootstrap=bootstrap, client=client, database=db, group=prefix + "sink", prefix=prefix).run(
        idle_exit_s=5, duration=120)
    out = {}
    for table, key, final in (("clearances", "event_id", ""), ("alerts", "event_id", ""), ("cases", "event_id", ""),
                              ("derived_alerts", "alert_id", "FINAL"), ("trends", "signal_id", "FINAL"),
                              ("risk_scores", "subject", "FINAL")):
        out[table] = tuple(client.query(f"SELECT count(), groupUniqArray({key}) FROM {db}.{table} {final}")
                           .result_rows[0])
        out[table] = (out[table][0], sorted(map(str, out[table][1])))
    return out


def test_three_broker_cluster_is_up_and_the_topics_replicate_three_times(cluster):
    settings, stack = cluster
    status = stack.status()["kafka"]
    assert status["running"] and len(status["brokers"]) == 3 and all(b["running"] for b in status["brokers"])
    prefix = f"s{uuid.uuid4().hex[:6]}."
    topics.apply(settings.bootstrap, prefix=prefix)
    md = AdminClient({"bootstrap.servers": settings.bootstrap}).list_topics(timeout=30)
    assert len(md.brokers) == 3
    t = md.topics[prefix + topics.source("SH", "clearance")]
    assert {len(p.replicas) for p in t.partitions.values()} == {3}
    assert {p.leader for p in t.partitions.values()} <= set(md.brokers)


@pytest.fixture(scope="module")
def scaled(cluster, clickhouse_url, tmp_path_factory):
    """The input through a worker joined mid-stream by a second one, and sunk."""
    from connectors.store import client as store

    settings, _ = cluster
    boot = settings.bootstrap
    tmp_path = tmp_path_factory.mktemp("scaled")
    client = store.get_client(clickhouse_url)
    db = f"t_scaled_{uuid.uuid4().hex[:6]}"
    client.command(f"CREATE DATABASE {db}")
    records = script().encoded(get_codec())
    two = f"b{uuid.uuid4().hex[:6]}."
    topics.apply(boot, prefix=two)

    # a second worker joining once the first has committed part of the input; the rest of the input is
    # published while the second one joins, so the rebalance happens with events in flight
    mine = [(two + t, k, v) for t, k, v in records]
    half = len(mine) * 2 // 5
    publish(boot, mine[:half])
    first = Worker(boot, two, tmp_path, "first")
    second = None
    try:
        sources = [two + t for t in topics.source_topics()]
        wait_until(lambda: group_offsets(boot, two + "streams", sources)[0] > 0, 180,
                   "the first worker to commit", [first])
        second = Worker(boot, two, tmp_path, "second")
        sent, shared, deadline = half, None, time.monotonic() + 180
        while shared is None and time.monotonic() < deadline:
            got = members(boot, two + "streams")
            if len(got) == 2 and all(got):
                shared = got
                break
            for w in (first, second):
                assert w.alive, f"worker {w.name} exited:\n{w.tail()}"
            if sent < len(mine):
                publish(boot, mine[sent:sent + 40])
                sent += 40
            time.sleep(0.5)
        assert shared is not None, "the second worker never held partitions:\n" + second.tail()
        committed, end = group_offsets(boot, two + "streams", sources)
        publish(boot, mine[sent:])
        assert committed < len(mine), "the first worker had read everything before the second joined"
        wait_until(settled(boot, two), 240, "the two workers to finish", [first, second])
    finally:
        for x in (first, second):
            if x is not None:
                x.stop()
    alerts = read_alerts_topic(boot, two + topics.DERIVED_ALERTS, 30)
    try:
        stored = sink_into(boot, client, db, two)
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
    return {"prefix": two, "shared": shared, "records": records, "alerts": alerts, "stored": stored}


@pytest.fixture(scope="module")
def ordered():
    """The answer of event-time order: the two stages fed the same events without Kafka."""
    return in_order(script(), PARTITIONS)


#: alerts of the subject stage: one traveller's events, in the order of their partition
SUBJECT_KINDS = {"CROSS_REGION_HIT", "PORT_SHOPPING", "TRANSIT_OVERSTAY", "TRANSIT_EXIT_TO_ORIGIN",
                 "TRANSIT_OUT_OF_AREA"}


def test_a_worker_joining_mid_stream_takes_a_share_of_every_stage(scaled):
    two, (a, b) = scaled["prefix"], scaled["shared"]
    assert not a & b, "a partition assigned to both workers"
    subject_parts = {p for t, p in a | b if t == two + "streams.subjects"}
    assert subject_parts == set(range(PARTITIONS)), "the subject stage's partitions are not all held"
    for mine in (a, b):
        assert {p for t, p in mine if t == two + "streams.subjects"}, "a worker holds no partition of the subject stage"
        assert {p for t, p in mine if ".border." in t}, "a worker holds no source partition"


def test_rebalance_loses_and_doubles_no_subject_stage_alert(scaled, ordered):
    ids = lambda alerts: {i: k for i, k in live(alerts).items() if k in SUBJECT_KINDS}  # noqa: E731
    want, got = ids(ordered.versions), ids(scaled["alerts"])
    assert len(want) >= 5
    assert got == want, {"only in event-time order": {i: k for i, k in want.items() if i not in got},
                         "only with two workers": {i: k for i, k in got.items() if i not in want}}


def test_rebalance_changes_no_stored_row(scaled):
    """Every event published is stored once, and nothing else; every subject-stage alert is stored."""
    codec = get_codec()
    published: dict[str, list[str]] = {"clearances": [], "alerts": [], "cases": []}
    for topic, _, value in scaled["records"]:
        kind = topic.rsplit(".", 1)[-1]
        table = {"clearance": "clearances", "alert": "alerts", "case": "cases"}.get(kind)
        if table:
            published[table].append(str(codec.decode(value)[1]["event_id"]))
    stored = scaled["stored"]
    for table, ids in published.items():
        assert len(ids) >= 10 and len(set(ids)) == len(ids), table
        assert stored[table] == (len(ids), sorted(ids)), table
    subject = {x["alert_id"]: x["kind"] for x in last_versions(scaled["alerts"]) if x["kind"] in SUBJECT_KINDS}
    missing = {i: k for i, k in subject.items() if i not in set(stored["derived_alerts"][1])}
    assert subject and not missing, f"derived alerts not stored: {missing}"


def forwarded(bootstrap: str, prefix: str) -> tuple[set, set]:
    """(every alert and case record published, as (topic, partition, offset); those the re-key step forwarded to
    streams.regional, named by its headers)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10).topics
        published = set()
        for t in topics.source_topics():
            if t.endswith((".alert", ".case")):
                for p in md[prefix + t].partitions:
                    low, high = c.get_watermark_offsets(TopicPartition(prefix + t, p), timeout=10)
                    published |= {(prefix + t, p, o) for o in range(low, high)}
    finally:
        c.close()
    got = set()
    for _, _, headers in records_on(bootstrap, prefix + "streams.regional"):
        h = dict(headers)
        if h.get("yrd-kind") in (b"alert", b"case"):
            got.add((h["yrd-source"].decode(), int(h["yrd-source-partition"]), int(h["yrd-source-offset"])))
    return published, got


def test_every_alert_and_case_reaches_the_regional_stage_through_the_rebalance(scaled, cluster):
    """Nothing lost at the re-key step: every alert and case record of every source partition is forwarded to
    streams.regional (a joining worker delivered a sparse partition's second record first, and the first was
    never forwarded while the commit went past it)."""
    settings, _ = cluster
    published, got = forwarded(settings.bootstrap, scaled["prefix"])
    assert len(published) >= 20
    assert published <= got, f"not forwarded {sorted(published - got)[:10]}"


def test_regional_stage_alerts_are_the_same_with_a_second_worker(scaled, ordered):
    what = lambda alerts: sorted({x["alert_id"]: (x["kind"], x.get("pattern") or "", x.get("conveyance_id") or "")  # noqa: E731
                                  for x in last_versions(alerts) if derived.is_live(x)
                                  and x["kind"] not in SUBJECT_KINDS}.values())
    assert what(ordered.versions)
    assert what(scaled["alerts"]) == what(ordered.versions)


def test_the_workers_give_the_answer_of_the_stages_run_without_kafka(scaled, ordered):
    """One answer per set of events: the live alerts of two workers sharing the work after a rebalance are those
    of the two stages fed the same events in event-time order without Kafka (tests/stage_pipeline.py)."""
    want = ordered.live()
    assert len(want) >= 10
    got = live(scaled["alerts"])
    diff = (f"missing {sorted((k, i) for i, k in want.items() if i not in got)}, "
            f"extra {sorted((k, i) for i, k in got.items() if i not in want)}")
    assert got == want, diff

