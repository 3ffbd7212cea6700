"""Topics as code: one declarative table, applied to the real broker; a second run changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from schemas import topics
from schemas.reference import REGIONS

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def _until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_the_table_defines_every_topic_of_the_bus_with_a_dead_letter_topic_for_each_source():
    specs = {s.name: s for s in topics.definitions()}
    for region in REGIONS:
        for kind in ("clearance", "alert", "case"):
            src = specs[topics.source(region, kind)]
            dlq = specs[topics.dead_letter(src.name)]
            assert (src.partitions, src.cleanup_policy, src.retention_ms) == (4, "delete", 30 * topics.DAY_MS)
            assert dlq.retention_ms > src.retention_ms
        assert topics.routed_alerts(region) in specs
    for name in (topics.CONTROL, topics.DERIVED_ALERTS, topics.TRENDS, topics.RISK_SCORES,
                 topics.dead_letter(topics.DERIVED_ALERTS)):
        assert name in specs
    assert specs[topics.CONTROL].cleanup_policy == specs[topics.RISK_SCORES].cleanup_policy == "compact"
    assert len(specs) == len(topics.definitions())   # no name twice
    # a private copy of the set for tests: every name behind the prefix
    assert all(s.name.startswith(("p.", "dlq.p.")) for s in topics.definitions("p."))


def test_replication_is_capped_by_the_brokers_and_min_insync_leaves_room_for_one_down():
    s = topics.spec(topics.source("SH", "clearance"))
    assert [s.replication_for(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    assert [s.configs(n)["min.insync.replicas"] for n in (1, 2, 3)] == ["1", "1", "2"]


def test_apply_creates_every_topic_then_a_second_run_changes_nothing(kafka, unique):
    prefix = f"{unique}."
    first = topics.apply(kafka.bootstrap, prefix=prefix)
    specs = topics.definitions(prefix)
    assert sorted(c.topic for c in first if c.action == "create") == sorted(s.name for s in specs)

    md = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
    for s in specs:
        assert len(md.topics[s.name].partitions) == s.partitions
    # apply returns once every partition's leader serves it: the first query of each answers, no "not leader"
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": unique})
    ends = {(s.name, p): c.get_watermark_offsets(TopicPartition(s.name, p), timeout=10)
            for s in specs for p in range(s.partitions)}
    c.close()
    assert set(ends.values()) == {(0, 0)}
    described = {r["topic"]: r for r in topics.describe(kafka.bootstrap, prefix=prefix)}
    for s in specs:
        assert described[s.name]["configs"] == s.configs(1), s.name

    # the command line, run twice: the second run reports no change
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap}
    out = subprocess.run([YRDBUS, "topics", "apply", "--json", "--prefix", prefix], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["changed"] is False
    assert json.loads(out.stdout)["changes"] == []


def test_apply_adds_partitions_and_puts_drifted_configs_back(kafka, unique):
    prefix = f"{unique}."
    name = prefix + topics.source("ZJ", "alert")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    fut = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                        config={"retention.ms": "3600000", "segment.ms": "600000"})])
    fut[name].result(timeout=30)
    _until(lambda: name in admin.list_topics(timeout=10).topics)

    changes = [c for c in topics.apply(kafka.bootstrap, prefix=prefix) if c.topic == name]
    assert {c.action for c in changes} == {"add_partitions", "alter_config"}
    assert "retention.ms: 3600000 -> 2592000000" in next(c.detail for c in changes if c.action == "alter_config")

    # the new partitions reach the brokers' metadata a moment after the controller made them
    _until(lambda: len(admin.list_topics(name, timeout=10).topics[name].partitions) >= 4)
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 4
    res = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
    cfg = next(iter(res.values())).result(timeout=30)
    assert cfg["retention.ms"].value == "2592000000"
    assert cfg["segment.ms"].value == "600000"      # a config the table does not manage is left alone
    assert topics.apply(kafka.bootstrap, prefix=prefix) == []


def test_a_workers_own_topics_are_created_before_it_joins_and_their_partitions_never_grow(kafka, unique):
    from streams.app import StreamsConfig, build_app, ensure_topics, worker_topics

    prefix = f"{unique}."
    cfg = StreamsConfig(bootstrap=kafka.bootstrap, prefix=prefix, app_id=f"{unique}-w", partitions=3)
    app = build_app(cfg)
    # the internal subject topic exists already with fewer partitions (made by an older worker)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(cfg.subject_topic, num_partitions=2, replication_factor=1)])[
        cfg.subject_topic].result(timeout=30)
    _until(lambda: cfg.subject_topic in admin.list_topics(timeout=10).topics)

    ensure_topics(cfg, app)
    md = admin.list_topics(timeout=10)
    changelogs = {f"{unique}-w-{t}-changelog": n for t, n in (("subjects", 3), ("flowcounts", 3), ("regional", 1))}
    for name, partitions in {**changelogs, cfg.regional_topic: 1}.items():
        assert len(md.topics[name].partitions) == partitions, name
    assert len(md.topics[cfg.subject_topic].partitions) == 2      # kept: a key's partition is state
    described = {s.name: s for s in worker_topics(app)}
    assert {described[n].cleanup_policy for n in changelogs} == {"compact"}
    res = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in changelogs])
    assert {f.result(timeout=30)["cleanup.policy"].value for f in res.values()} == {"compact"}
    # Faust's leader-election topic is not used, so not made
    assert not any("__assignor" in t for t in md.topics if t.startswith(unique))
    # a second worker starting: nothing to change, the short topic reported kept
    again = topics.apply(kafka.bootstrap, specs=worker_topics(app))
    assert [(c.topic, c.action) for c in again] == [(cfg.subject_topic, "kept")]
