"""Topic names of the bus, in one place, and every topic's definition as code.

``definitions()`` is the one declarative table of the bus's topics
(partitions, retention, cleanup policy, ``min.insync.replicas``, replication
factor); ``apply()`` makes a cluster match it: creates what is missing, adds
partitions, alters configs that differ. Running it twice changes nothing the
second time. ``yrdbus topics apply`` and ``yrdbus topics list`` are its
command line. Every topic the bus creates is created here: ``apply()`` (the
command line, the stream worker's own topics), ``ensure()`` (a publisher
before its first event) and ``create_missing()`` (the gateway's topics).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from schemas.contract import SOURCE_KINDS
from schemas.reference import REGIONS

DERIVED_ALERTS = "alerts.derived"
TRENDS = "trends"
RISK_SCORES = "risk.scores"
CONTROL = "control"
DISPOSITIONS = "dispositions"


def source(region: str, kind: str) -> str:
    """``border.<REGION>.<kind>``: what a region's stations publish (kind: clearance, alert, case)."""
    return f"border.{region}.{kind}"


def source_topics() -> list[str]:
    return [source(r, k) for r in REGIONS for k in SOURCE_KINDS]


def routed_alerts(region: str) -> str:
    """``alerts.to.<REGION>``: the derived alerts a region must act on or be informed of."""
    return f"alerts.to.{region}"


def dead_letter(topic: str) -> str:
    return f"dlq.{topic}"


# =========================================================================== definitions
DAY_MS = 24 * 3600 * 1000
DEFAULT_PARTITIONS = 4      # of the source topics (`definitions`)

#: Replication wanted on a real cluster (ARCHITECTURE.md: RF 3, min ISR 2); capped by the brokers present.
WANTED_REPLICATION = 3


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the bus wants it."""

    name: str
    partitions: int
    retention_ms: int           # -1: kept forever (compacted topics)
    cleanup_policy: str         # delete | compact
    purpose: str
    replication: int = WANTED_REPLICATION
    extra: dict = field(default_factory=dict)
    #: partitions fixed once created (a key's partition is part of the stream layer's state): never grown
    fixed_partitions: bool = False

    def replication_for(self, brokers: int) -> int:
        return max(1, min(self.replication, brokers))

    def configs(self, brokers: int) -> dict[str, str]:
        """The topic-level configs ``apply`` sets, as the broker reports them (strings)."""
        rf = self.replication_for(brokers)
        out = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            # One replica may be down and writes with acks=all still succeed; with RF 1 there is only one.
            "min.insync.replicas": str(max(1, rf - 1)),
        }
        out.update({k: str(v) for k, v in self.extra.items()})
        return out


def definitions(prefix: str = "") -> list[TopicSpec]:
    """Every topic of the bus. ``prefix`` (tests only) puts a private copy of the whole set beside the real one."""
    specs: list[TopicSpec] = []
    for region in REGIONS:
        for kind in SOURCE_KINDS:
            # Source topics are the record of what each agency saw: 30 days on the bus (ClickHouse keeps it
            # for good). 4 partitions: enough for two workers per topic on this 2-core machine; raise them
            # with `topics apply` when a real cluster needs more (keys keep per-subject order either way,
            # except across the raise itself).
            specs.append(TopicSpec(prefix + source(region, kind), DEFAULT_PARTITIONS, 30 * DAY_MS, "delete",
                                   f"{kind} events published by {region}'s stations, keyed by "
                                   f"{'case_id' if kind == 'case' else 'subject token'}"))
    specs += [
        # Control events are keyed by their event_id (a change to a window reuses it): compaction keeps
        # the latest version of every window for good, so a worker that starts late still learns of all.
        TopicSpec(prefix + CONTROL, 1, -1, "compact",
                  "operators' control events (heightened-security windows), keyed by event_id"),
        TopicSpec(prefix + DERIVED_ALERTS, 4, 90 * DAY_MS, "delete",
                  "every derived alert of the stream layer"),
        TopicSpec(prefix + TRENDS, 2, 90 * DAY_MS, "delete", "trend signals of case counts and passenger flow"),
        # The latest risk score per subject or vessel is what a reader needs: compacted by its key.
        TopicSpec(prefix + RISK_SCORES, 4, -1, "compact", "the current risk score of each subject and vessel"),
        # Officers' acknowledgements and settlements of derived alerts (the gateway writes them), keyed by
        # alert_id: kept as long as the alerts they answer.
        TopicSpec(prefix + DISPOSITIONS, 2, 90 * DAY_MS, "delete",
                  "officers' dispositions of derived alerts (acknowledged, confirmed, false alarm, no action), "
                  "keyed by alert_id"),
    ]
    for region in REGIONS:
        specs.append(TopicSpec(prefix + routed_alerts(region), 2, 30 * DAY_MS, "delete",
                               f"derived alerts {region} must act on or be informed of"))
    # Dead letters wait for a person to look at them: kept three times as long as their source.
    for name in [s.name for s in specs if s.name.startswith(prefix + "border.")] + [
            prefix + CONTROL, prefix + DERIVED_ALERTS, prefix + DISPOSITIONS]:
        specs.append(TopicSpec(dead_letter(name), 1, 90 * DAY_MS, "delete",
                               f"records of {name} that broke the contract, original bytes and the reason"))
    # Rows of a station's export whose region cannot be told (so no source topic): the importer's last resort.
    specs.append(TopicSpec(dead_letter(prefix + "import"), 1, 90 * DAY_MS, "delete",
                           "imported rows whose region could not be read"))
    # Webhook deliveries that failed every attempt (the gateway's `dlq.webhooks`).
    specs.append(TopicSpec(dead_letter(prefix + "webhooks"), 1, 90 * DAY_MS, "delete",
                           "derived alerts a webhook subscriber could not be given, with the reason"))
    return specs


def spec(name: str, prefix: str = "") -> TopicSpec:
    for s in definitions(prefix):
        if s.name == name:
            return s
    raise KeyError(f"{name!r} is not a topic of the bus")


# =========================================================================== apply
@dataclass
class Change:
    topic: str
    action: str        # create | add_partitions | alter_config | kept
    detail: str

    def as_dict(self) -> dict:
        return {"topic": self.topic, "action": self.action, "detail": self.detail}


class TopicsError(RuntimeError):
    """The cluster refused a topic change; the message says which and why."""


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    from schemas.kafka_config import kafka_security

    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, **kafka_security()})


def _wait(futures: dict, what: str, timeout: float = 30.0) -> dict:
    out, errors = {}, []
    for key, fut in futures.items():
        try:
            out[key] = fut.result(timeout=timeout)
        except Exception as exc:  # KafkaException carries the broker's error
            errors.append(f"{what} {getattr(key, 'name', key)}: {exc}")
    if errors:
        raise TopicsError("; ".join(errors))
    return out


def _leaders_serve(admin, partitions: list[tuple[str, int]], timeout: float) -> bool:
    """Whether the leader of every one of ``partitions`` answers a query of its end offset (it answers
    "not leader" until it has created the partition)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    try:
        _wait(admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions},
                                 request_timeout=timeout), "list offsets of", timeout)
    except TopicsError:
        return False
    return True


def describe(bootstrap: str, prefix: str = "", timeout: float = 30.0) -> list[dict]:
    """Each defined topic as the cluster has it now: partitions, replication, the configs we manage."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = _admin(bootstrap)
    md = admin.list_topics(timeout=timeout)
    brokers = max(1, len(md.brokers))
    specs = definitions(prefix)
    present = [s for s in specs if s.name in md.topics and not md.topics[s.name].error]
    configs: dict[str, dict[str, str]] = {}
    if present:
        res = _wait(admin.describe_configs([ConfigResource(ResourceType.TOPIC, s.name) for s in present]),
                    "describe", timeout)
        for resource, entries in res.items():
            configs[resource.name] = {k: v.value for k, v in entries.items()}
    rows = []
    for s in specs:
        t = md.topics.get(s.name)
        exists = t is not None and not t.error
        have = configs.get(s.name, {})
        rows.append({
            "topic": s.name, "exists": exists, "purpose": s.purpose,
            "partitions": len(t.partitions) if exists else None, "wanted_partitions": s.partitions,
            "replication": len(next(iter(t.partitions.values())).replicas) if exists and t.partitions else None,
            "wanted_replication": s.replication_for(brokers),
            "configs": {k: have.get(k) for k in s.configs(brokers)} if exists else {},
            "wanted_configs": s.configs(brokers),
        })
    return rows


def apply(bootstrap: str, prefix: str = "", timeout: float = 30.0, dry_run: bool = False,
          specs: list[TopicSpec] | None = None) -> list[Change]:
    """Make the cluster at ``bootstrap`` match ``definitions(prefix)`` (or ``specs``: a stream worker's own
    topics); return what was changed (empty: nothing).

    Missing topics are created; a topic with fewer partitions than defined gets more (never fewer: Kafka
    cannot remove partitions, which is reported as ``kept``); topic configs that differ are set with
    incremental alter-configs, so configs this table does not manage are left as they are. The replication
    factor of an existing topic is not changed (that is a reassignment): a difference is reported as ``kept``.
    """
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                       NewTopic, ResourceType)

    admin = _admin(bootstrap)
    md = admin.list_topics(timeout=timeout)
    brokers = max(1, len(md.brokers))
    specs = definitions(prefix) if specs is None else specs
    changes: list[Change] = []

    missing = [s for s in specs if s.name not in md.topics or md.topics[s.name].error]
    if missing:
        changes += [Change(s.name, "create", f"{s.partitions} partitions, replication {s.replication_for(brokers)}, "
                           + ", ".join(f"{k}={v}" for k, v in s.configs(brokers).items())) for s in missing]
        if not dry_run:
            new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_for(brokers),
                            config=s.configs(brokers)) for s in missing]
            futures = admin.create_topics(new, operation_timeout=timeout)
            errors = []
            for name, fut in futures.items():
                try:
                    fut.result(timeout=timeout)
                except Exception as exc:
                    # Another process may have created it between our look and our create: that is fine.
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        errors.append(f"create {name}: {exc}")
            if errors:
                raise TopicsError("; ".join(errors))

    existing = [s for s in specs if s not in missing]
    grow = []
    for s in existing:
        t = md.topics[s.name]
        have = len(t.partitions)
        if have < s.partitions and s.fixed_partitions:
            changes.append(Change(s.name, "kept", f"has {have} partitions, defined {s.partitions}: fixed once "
                                  "created (the partition of a key is part of the state kept)"))
        elif have < s.partitions:
            grow.append(NewPartitions(s.name, s.partitions))
            changes.append(Change(s.name, "add_partitions", f"{have} -> {s.partitions}"))
        elif have > s.partitions:
            changes.append(Change(s.name, "kept", f"has {have} partitions, defined {s.partitions}: "
                                  "Kafka cannot remove partitions"))
        rf = len(next(iter(t.partitions.values())).replicas) if t.partitions else 0
        if rf and rf != s.replication_for(brokers):
            changes.append(Change(s.name, "kept", f"replication {rf}, defined {s.replication_for(brokers)}: "
                                  "changing it is a partition reassignment, not done here"))
    if grow and not dry_run:
        errors = []
        for name, fut in admin.create_partitions(grow, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
            except Exception as exc:
                # metadata a moment old: the partitions were already added (by us a moment ago, or by another)
                if "already has" not in str(exc):
                    errors.append(f"add partitions to {name}: {exc}")
        if errors:
            raise TopicsError("; ".join(errors))

    if existing:
        res = _wait(admin.describe_configs([ConfigResource(ResourceType.TOPIC, s.name) for s in existing]),
                    "describe", timeout)
        have_cfg = {r.name: {k: v.value for k, v in entries.items()} for r, entries in res.items()}
        alter = []
        for s in existing:
            differ = {k: v for k, v in s.configs(brokers).items() if have_cfg.get(s.name, {}).get(k) != v}
            if not differ:
                continue
            changes.append(Change(s.name, "alter_config", ", ".join(
                f"{k}: {have_cfg.get(s.name, {}).get(k)} -> {v}" for k, v in differ.items())))
            alter.append(ConfigResource(ResourceType.TOPIC, s.name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differ.items()]))
        if alter and not dry_run:
            _wait(admin.incremental_alter_configs(alter), "alter configs of", timeout)
    if not dry_run and any(c.action != "kept" for c in changes):
        _settle(admin, specs, brokers, timeout)
    return changes


def _settle(admin, specs: list[TopicSpec], brokers: int, timeout: float) -> None:
    """Wait until the brokers' metadata and configs show every change (they follow the controller a moment
    later), so that whoever looks next, a second ``apply`` included, sees the topics as defined, and until
    every partition's leader serves it.

    The metadata names a new partition's leader before that broker has created the partition's log; a
    produce meanwhile is refused (not leader) and retried. With several batches of one partition in flight
    those retries have been seen to lose records the idempotent producer had reported delivered (librdkafka
    2.16 against Kafka 4.4, under load; tests/test_topics.py). So ``apply`` returns only once the leaders
    answer."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        ready = all(s.name in md.topics and not md.topics[s.name].error
                    and (s.fixed_partitions or len(md.topics[s.name].partitions) >= s.partitions) for s in specs)
        if ready:
            ready = _leaders_serve(admin, [(s.name, p) for s in specs for p in md.topics[s.name].partitions],
                                   timeout)
        if ready:
            try:
                res = _wait(admin.describe_configs([ConfigResource(ResourceType.TOPIC, s.name) for s in specs]),
                            "describe", timeout)
            except TopicsError:
                res = None
            if res is not None:
                have = {r.name: {k: v.value for k, v in e.items()} for r, e in res.items()}
                if all(have.get(s.name, {}).get(k) == v for s in specs for k, v in s.configs(brokers).items()):
                    return
        if time.monotonic() >= deadline:
            raise TopicsError(f"the topic changes were made but did not show in the brokers' metadata "
                              f"within {timeout:.0f} s")
        time.sleep(0.2)


def ensure(bootstrap: str, prefix: str = "", timeout: float = 30.0) -> list[Change]:
    """``apply`` for a publisher that is about to write: the topics exist, as defined, before the first event.

    On a secured cluster a station or service may not create or describe topics (only ``admin`` applies
    them, docs/security.md): a refusal for want of rights is not an error here, the writes that follow
    succeed or fail on the principal's own ACLs.
    """
    try:
        return apply(bootstrap, prefix=prefix, timeout=timeout)
    except TopicsError as exc:
        if "AUTHORIZATION_FAILED" in str(exc):
            return []
        raise


def create_missing(bootstrap: str, names: list[str], prefix: str = "", timeout_s: float = 30.0,
                  config: dict | None = None) -> dict[str, int]:
    """Create those of ``names`` that do not exist yet, wait until each has its partitions and their leaders, and
    return each one's partition count: for a client that only needs its topics there (the gateway), where
    ``apply`` makes a whole cluster match the definitions.

    A topic defined here is created as defined; any other (``dlq.webhooks``) with the broker's defaults.
    ``config``: the client's own security options (default: the process's settings).
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    from schemas.kafka_config import kafka_security

    admin = AdminClient({"bootstrap.servers": bootstrap, **(kafka_security() if config is None else config)})
    meta = admin.list_topics(timeout=timeout_s)
    missing = [n for n in names if n not in meta.topics or meta.topics[n].error]
    if missing:
        brokers = max(1, len(meta.brokers))
        new = []
        for n in missing:
            declared = _declared(n, prefix)
            if declared is None:
                new.append(NewTopic(n))
            else:
                new.append(NewTopic(n, num_partitions=declared.partitions,
                                    replication_factor=declared.replication_for(brokers),
                                    config=declared.configs(brokers)))
        for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                fut.result()
            except Exception as exc:  # another process may have created it meanwhile
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    # A topic just created can take a moment to show its partitions, and their leaders, in the metadata.
    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(timeout=timeout_s)
        lacking = [n for n in names if n not in meta.topics or meta.topics[n].error or not meta.topics[n].partitions
                   or any(p.leader < 0 for p in meta.topics[n].partitions.values())]
        if not lacking:
            return {n: len(meta.topics[n].partitions) for n in names}
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic(s) {', '.join(lacking)} still have no partitions {timeout_s:g} s after creation")
        time.sleep(0.1)


def _declared(name: str, prefix: str):
    try:
        return spec(name, prefix)
    except KeyError:
        return None
