"""Prometheus for the bus: the configuration and rules pass promtool, every alerting rule has unit tests that
make it fire and keep it quiet, the stations' operating hours follow the reference data, and the Kafka
exporter reports the lag of a consumer group and the records of a topic exactly, read from the real broker."""
from __future__ import annotations

import yaml
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.settings import Settings
from yrdbus import observability as obs


def test_promtool_checks_the_configuration_and_the_rules():
    for result in obs.check():
        assert result["ok"], f"{result['step']}:\n{result['output']}"


def test_promtool_rejects_a_rule_file_with_a_broken_expression(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum by (group (x)\n")
    assert obs.promtool("check", "rules", str(bad)).returncode != 0


def test_every_alerting_rule_has_a_test_that_fires_it_and_one_that_keeps_it_quiet():
    alerts = {r["alert"] for f in obs.rule_files() for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert {"StationSilent", "ConsumerLagGrowing", "DeadLettersArriving", "SinkInsertFailures", "WorkerDown"} <= alerts
    fires, quiet = set(), set()
    for f in obs.rule_test_files():
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert alerts - fires == set(), "alerts no test makes fire"
    assert alerts - quiet == set(), "alerts no test keeps quiet"


def test_the_scrape_configuration_has_a_job_per_process_on_the_settings_ports():
    config = yaml.safe_load(obs.CONFIG_FILE.read_text())
    committed = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert committed == obs.scrape_targets(Settings(_env_file=None))
    s = Settings(_env_file=None, query_port=18124, worker_metrics_port=19402, prometheus_port=19090)
    rendered = yaml.safe_load(obs.render_config(s, workers=3, scrape_interval="2s"))
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in rendered["scrape_configs"]}
    assert jobs["yrdbus-worker"] == ["127.0.0.1:19402", "127.0.0.1:19403", "127.0.0.1:19404"]
    assert jobs["yrdbus-sink"] == ["127.0.0.1:18124"] and rendered["global"]["scrape_interval"] == "2s"
    assert rendered["rule_files"] == [str(obs.RULES_DIR.resolve() / "*.yml")]


def test_station_hours_rules_are_those_of_the_reference_data_and_watch_the_busy_stations():
    assert obs.STATION_HOURS_FILE.read_text() == obs.station_hours_rules(), \
        "stale: run `yrdbus prometheus station-hours --write`"
    hours = obs.station_watch_hours()
    assert len(hours) == 19
    assert hours["SH-PVG"] == list(range(24))                # Pudong never sleeps
    assert hours["AH-AQG"] == []                             # Anqing's river port is too quiet to watch
    per_hour = obs.station_expected_per_hour()
    for station, watched in hours.items():
        for h in watched:
            assert min(per_hour[station][h], per_hour[station][h - 1], per_hour[station][h - 2]) \
                >= obs.WATCH_MIN_CROSSINGS_PER_HOUR


def _families(registry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_the_kafka_exporter_reports_lag_per_group_and_partition_and_records_per_topic(kafka, unique):
    prefix = f"{unique}."
    topic, dlq = f"{prefix}border.SH.clearance", f"dlq.{prefix}border.SH.clearance"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 2, 1), NewTopic(dlq, 1, 1)]).values():
        fut.result(30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(30):
        producer.produce(topic, value=b"x", key=str(i).encode(), partition=i % 2)
    for i in range(3):
        producer.produce(dlq, value=b"bad", partition=0)
    assert producer.flush(30) == 0
    group = f"{unique}-group"
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    for attempt in range(30):       # a new group's coordinator takes a moment to load
        try:
            consumer.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 15)], asynchronous=False)
            break
        except KafkaException:
            time.sleep(0.5)
    consumer.close()

    registry = obs.exporter_registry(kafka.bootstrap, prefix=prefix)
    families = _families(registry)
    assert families["yrdbus_kafka_up"].samples[0].value == 1
    lag = {(s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value
           for s in families["yrdbus_kafka_consumer_lag_messages"].samples}
    assert lag == {(group, topic, "0"): 5, (group, topic, "1"): 0}
    # the same under the names community Kafka dashboards query (danielqsj/kafka_exporter)
    assert {(s.labels["consumergroup"], s.labels["topic"], s.labels["partition"]): s.value
            for s in families["kafka_consumergroup_lag"].samples} == lag
    assert {(s.labels["consumergroup"], s.labels["topic"]): s.value
            for s in families["kafka_consumergroup_lag_sum"].samples} == {(group, topic): 5}
    assert {(s.labels["consumergroup"], s.labels["partition"]): s.value
            for s in families["kafka_consumergroup_current_offset"].samples} == {(group, "0"): 10, (group, "1"): 15}
    assert {(s.labels["topic"], s.labels["partition"]): s.value
            for s in families["kafka_topic_partition_current_offset"].samples} == {
        (topic, "0"): 15, (topic, "1"): 15, (dlq, "0"): 3}
    messages = {s.labels["topic"]: s.value for s in families["yrdbus_kafka_topic_messages"].samples
                if s.name.endswith("_total")}
    assert messages == {topic: 30, dlq: 3}

    # the broker gone: the exporter says so instead of failing the scrape
    gone = _families(obs.exporter_registry("127.0.0.1:1", prefix=prefix, timeout_s=1))
    assert gone["yrdbus_kafka_up"].samples[0].value == 0
