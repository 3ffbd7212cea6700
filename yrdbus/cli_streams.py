"""`yrdbus worker` (a stream-processing worker), `yrdbus worker repair-watermark` (persisted event time outside
the contract's bounds, rewritten with the workers stopped) and `yrdbus evaluate` (derived alerts against ground truth).
"""
from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail


class Loop(str, Enum):
    uvloop = "uvloop"
    asyncio = "asyncio"


class WorkerAction(str, Enum):
    repair_watermark = "repair-watermark"


def worker(
    action: Optional[WorkerAction] = typer.Argument(
        None, show_default=False,
        help="Omitted: run a worker. repair-watermark: with every worker of --app-id stopped, rewrite the persisted "
             "event times outside the bounds (YRDBUS_EVENT_TIME_FLOOR, now + YRDBUS_EVENT_TIME_FUTURE_SKEW_S) in the "
             "changelogs of its regional and flowcounts tables, and print what changed."),
    partitions: int = typer.Option(4, "--partitions", min=1, envvar="YRDBUS_STREAMS_PARTITIONS",
                                   help="Partitions of the subject-keyed internal topic (fixed once created)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="YRDBUS_STREAMS_DATA_DIR",
                                            help="This worker's own folder (default: <var_dir>/streams/<pid>)."),
    rules: Optional[Path] = typer.Option(None, "--rules", envvar="YRDBUS_RULES",
                                         help="Rule set file (default: streams/rules.toml)."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX",
                               help="Prefix of every topic name read and written (a private copy of the bus)."),
    app_id: str = typer.Option("yrdbus-streams", "--app-id", envvar="YRDBUS_STREAMS_APP_ID",
                               help="Consumer group and changelog prefix; workers with the same id share partitions."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="YRDBUS_WORKER_METRICS_PORT",
                                               help="Serve Prometheus /metrics on this port (default: none)."),
    replication: int = typer.Option(1, "--replication", min=1, help="Replication factor of internal topics."),
    stall_s: float = typer.Option(60.0, "--stall-s", min=0, envvar="YRDBUS_WORKER_STALL_S",
                                  help="Start the worker again (same pid) when it holds records to process and commits "
                                       "nothing for this many seconds while the broker answers; 0: never."),
    loglevel: str = typer.Option("warning", "--loglevel", envvar="YRDBUS_WORKER_LOGLEVEL", help="Faust log level (debug, info, warning, error)."),
    loop: Loop = typer.Option(Loop.uvloop, "--loop", envvar="YRDBUS_WORKER_LOOP",
                              help="Event loop: uvloop (libuv) or asyncio (the standard library's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="repair-watermark: print what would change, write nothing."),
    json_out: bool = typer.Option(False, "--json", help="repair-watermark: print the repairs as JSON."),
) -> None:
    """Run one stream-processing worker (Faust). Start several with the same --app-id to share the partitions.

    `yrdbus worker repair-watermark --app-id ID [--dry-run] [--json]`, with every worker of ID stopped:
    rewrite the state that source events dated outside the event-time bounds left in its tables' changelogs.
    Upstreams' largest event times outside the bounds are removed; judged-up-to hours beyond now + skew are
    set back to the last hour that ends by then; hourly counts and cooldowns dated later are removed.
    The workers recover the corrected records at their next start.
    """
    import sys

    if action is WorkerAction.repair_watermark:
        repair_watermark(app_id, dry_run=dry_run, json_out=json_out)
        return
    if dry_run or json_out:
        fail("--dry-run and --json go with `yrdbus worker repair-watermark`", 2)

    if loop is Loop.uvloop:
        # before Faust makes its loops (the worker's, and its consumer thread's)
        import mode.loop

        mode.loop.use("uvloop")

    from streams import metrics
    from streams.app import StreamsConfig, build_app, ensure_topics
    from streams.ruleset import RuleSetError

    settings = get_settings()
    cfg = StreamsConfig(bootstrap=settings.bootstrap, app_id=app_id, prefix=prefix, partitions=partitions,
                        data_dir=data_dir or settings.var_dir / "streams" / str(os.getpid()),
                        rules=str(rules) if rules else None, replication=replication, metrics_port=metrics_port,
                        stall_s=stall_s)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    from schemas.kafka_config import KafkaSecurityError, describe, faust_credentials, secured

    try:
        fapp = build_app(cfg)
    except RuleSetError as exc:
        fail(str(exc))
    try:
        # the worker's principal (svc-streams on a secured cluster, docs/security.md)
        fapp.conf.broker_credentials = faust_credentials(settings)
    except KafkaSecurityError as exc:
        fail(str(exc))
    try:
        ensure_topics(cfg, fapp)
    except Exception as exc:  # the admin client's errors name the topic and the broker's reason
        # On a secured cluster only admin creates the bus's topics; a principal without rights on the worker's
        # own topics is told so by Faust as it declares them.
        if not (secured(settings) and "AUTHORIZATION_FAILED" in str(exc)):
            fail(f"cannot prepare the topics at {cfg.bootstrap}: {exc}")
    metrics.serve(metrics_port, get_settings().metrics_host)
    typer.echo(f"stream worker {app_id} on {cfg.bootstrap} ({describe(settings)}, "
               f"rule set {fapp.yrd_rules.version}, prefix {prefix or '-'}, pid {os.getpid()})", err=True)
    from faust import Worker

    sys.argv = sys.argv[:1]
    fworker = Worker(fapp, loglevel=loglevel, quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG, so that every debug call of Faust and aiokafka
    # (several per record sent) builds a LogRecord: 7 % of a busy worker's time in a profile. No spinner.
    fworker.spinner = None
    fworker.execute_from_commandline()


# ---------------------------------------------------------------------- repair-watermark
HOUR = 3_600_000
#: the stream worker's tables whose state holds event times (streams/app.py: the regional stage's sections and its
#: upstreams' maxima under "watermark"; the subject stage's flow counts per partition with their upstreams' maxima)
REPAIRED_TABLES = ("regional", "flowcounts")


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic Faust keeps a table of app ``app_id`` in."""
    return f"{app_id}-{table}-changelog"


def _when(ms) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000.0, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError, TypeError):
        return f"{ms!r} ms since 1970 (outside any calendar)"


class _Fixer:
    """The rewrites of one table entry: ``changes`` says what each did."""

    def __init__(self, floor_ms: int, limit_ms: int):
        self.floor_ms, self.limit_ms = floor_ms, limit_ms
        self.last_hour = limit_ms // HOUR           # the newest hour that may hold events
        self.judged_cap = limit_ms // HOUR - 1      # the newest hour whose end may have been passed
        self.changes: list[str] = []

    def maxima(self, d: dict, label: str) -> dict:
        """Upstreams' largest event times: one outside the bounds is removed (as the worker's restore leaves it
        out: its upstream then holds the stage back until it speaks or goes idle)."""
        out = {}
        for k, m in d.items():
            if isinstance(m, (int, float)) and self.floor_ms <= m <= self.limit_ms:
                out[k] = m
            else:
                self.changes.append(f"{label} {k}: {_when(m)} removed")
        return out

    def mark(self, hour, label: str):
        """A judged-up-to hour beyond the limit: set back to the last hour that ends by the limit."""
        if isinstance(hour, int) and hour > self.judged_cap:
            self.changes.append(f"{label}: hour of {_when(hour * HOUR)} -> hour of {_when(self.judged_cap * HOUR)}")
            return self.judged_cap
        return hour

    def first(self, hour, label: str):
        """A first-hour mark beyond the limit (nothing in bounds was seen): forgotten, the next event sets it."""
        if isinstance(hour, int) and hour > self.last_hour:
            self.changes.append(f"{label}: hour of {_when(hour * HOUR)} removed")
            return None
        return hour

    def hours(self, d: dict, label: str, hour_of=int) -> dict:
        """Entries keyed by an hour (``hour_of(key)``): those beyond the limit's hour are removed."""
        out = {}
        for k, v in d.items():
            try:
                late = hour_of(k) > self.last_hour
            except (TypeError, ValueError):
                late = False
            if late:
                self.changes.append(f"{label} {k} removed (hour of {_when(hour_of(k) * HOUR)})")
            else:
                out[k] = v
        return out

    def times(self, d: dict, label: str, time_of=lambda v: v) -> dict:
        """Entries dated (``time_of(value)``, ms) beyond the limit are removed (cooldowns that would never end)."""
        out = {}
        for k, v in d.items():
            t = time_of(v)
            if isinstance(t, (int, float)) and t > self.limit_ms:
                self.changes.append(f"{label} {k} removed ({_when(t)})")
            else:
                out[k] = v
        return out


def _port_hour(key: str) -> int:
    return int(key.rsplit("|", 1)[1])


def _repair_trend(f: _Fixer, t: dict) -> None:
    t["judged"] = f.mark(t.get("judged"), "trend judged")
    t["first_hour"] = f.first(t.get("first_hour"), "trend first_hour")
    for sec in ("buckets", "ids"):
        t[sec] = {k: f.hours(v, f"trend {sec}[{k}]") for k, v in (t.get(sec) or {}).items()}
    _forget_watermark(f, t, "trend")
    t["rising"] = f.hours(t.get("rising") or {}, "trend rising window")
    t["raised"] = f.times(t.get("raised") or {}, "trend alert", _alert_time)
    if "episodes" in t:     # a state written before episodes were worked out from the rising windows
        t["episodes"] = f.times(t.get("episodes") or {}, "trend episode",
                                lambda e: max(e.get("last") or 0, e.get("since") or 0) if isinstance(e, dict) else None)
    for ct, sys_ in (t.get("systemic") or {}).items():
        sys_["rising"] = f.times(sys_.get("rising") or {}, f"systemic[{ct}] rising",
                                 lambda r: r.get("at") if isinstance(r, dict) else None)
        if isinstance(sys_.get("last"), (int, float)) and sys_["last"] > f.limit_ms:
            f.changes.append(f"systemic[{ct}] last {_when(sys_['last'])} removed")
            sys_["last"] = None


def _repair_flow(f: _Fixer, fl: dict) -> None:
    fl["judged"] = f.mark(fl.get("judged"), "flow judged")
    fl["first_hour"] = f.first(fl.get("first_hour"), "flow first_hour")
    fl["progress"] = {p: f.mark(h, f"flow progress[{p}]") for p, h in (fl.get("progress") or {}).items()}
    fl["partials"] = f.hours(fl.get("partials") or {}, "flow partial", _port_hour)
    fl["history"] = {port: f.hours(h, f"flow history[{port}]") for port, h in (fl.get("history") or {}).items()}
    fl["fired"] = f.times(fl.get("fired") or {}, "flow fired")
    _forget_watermark(f, fl, "flow")
    fl["snaps"] = f.hours(fl.get("snaps") or {}, "flow judged hour")
    fl["raised"] = f.times(fl.get("raised") or {}, "flow alert", _alert_time)


def _alert_time(a):
    """A kept derived alert's event time (None: not an alert)."""
    return a.get("occurred_at") if isinstance(a, dict) else None


def _forget_watermark(f: _Fixer, d: dict, label: str) -> None:
    """The watermark a detector judged at last, beyond the limit: forgotten (the stage's next one sets it)."""
    wm = d.get("wm")
    if isinstance(wm, (int, float)) and wm > f.limit_ms:
        f.changes.append(f"{label} watermark {_when(wm)} removed")
        d["wm"] = None


def _repair_counts(f: _Fixer, fc: dict) -> None:
    fc["wm"] = f.maxima(fc.get("wm") or {}, "upstream")
    fc["sources"] = f.maxima(fc.get("sources") or {}, "flow source")
    fc["progress"] = f.mark(fc.get("progress"), "progress")
    if "counts" in fc:      # (the counts inside the partition's state: a table of an earlier release)
        fc["counts"] = f.hours(fc.get("counts") or {}, "count", _port_hour)
    fc["sent"] = f.hours(fc.get("sent") or {}, "sent", _port_hour)


def plan_watermark_repair(tables: dict[str, dict], bounds) -> list[dict]:
    """The entries to rewrite so that no persisted event time lies outside ``bounds`` (an ``EventTimeBounds``;
    its clock is now).

    ``tables``: {"regional": {key: value}, "flowcounts": {key: value}}, each table's current values. Returns one
    {"table", "key", "value", "changes"} per entry that changes (``value`` the corrected one; None: the entry is
    deleted, a tombstone), in table, key order.
    Repaired: the upstreams' largest event times (regional["watermark"], flowcounts[p]["wm"] and ["sources"]);
    the judged-up-to marks (regional["trend"]["judged"], regional["flow"]["judged"] and ["progress"],
    flowcounts[p]["progress"]); first-hour marks, hourly counts (flowcounts["<p>|<port>|<hour>"] and
    regional["flow:<port>|<hour>"] deleted) and cooldown times dated beyond the limit. Not repaired: what a
    judgement at a forged watermark pruned (those hours' counts and windows are gone), state other than these keys
    (subjects, fraud, conveyance, heightened, vessels).
    """
    from streams.regional_stage import FLOW_PARTIAL

    now_ms = int(bounds.clock() * 1000)
    repairs = []
    for table in REPAIRED_TABLES:
        for key in sorted(tables.get(table) or {}):
            value = tables[table][key]
            f = _Fixer(bounds.floor_ms, now_ms + bounds.skew_ms)
            if table == "flowcounts" and "|" in key:
                # one count (``<partition>|<port>|<hour>``): one of an hour beyond the limit is deleted
                if f.hours({key.split("|", 1)[1]: value}, "count", _port_hour) == {}:
                    repairs.append({"table": table, "key": key, "value": None, "changes": f.changes})
                continue
            if table == "regional" and key.startswith(FLOW_PARTIAL):
                # one flow partial (``flow:<port>|<hour>``): one of an hour beyond the limit is deleted
                if f.hours({key[len(FLOW_PARTIAL):]: value}, "flow partial", _port_hour) == {}:
                    repairs.append({"table": table, "key": key, "value": None, "changes": f.changes})
                continue
            if not isinstance(value, dict):
                continue
            new = copy.deepcopy(value)
            if table == "regional" and key == "watermark":
                new = f.maxima(new, "upstream")
            elif table == "regional" and key == "trend":
                _repair_trend(f, new)
            elif table == "regional" and key == "flow":
                _repair_flow(f, new)
            elif table == "flowcounts":
                _repair_counts(f, new)
            if f.changes:
                repairs.append({"table": table, "key": key, "value": new, "changes": f.changes})
    return repairs


def _group_members(settings, group: str) -> int:
    """The members of consumer group ``group`` (0: none, or no such group)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    from schemas.kafka_config import client_config

    admin = AdminClient(client_config(settings, **{"socket.timeout.ms": 10000}))
    try:
        g = admin.describe_consumer_groups([group])[group].result(timeout=30)
    except KafkaException as exc:
        if exc.args and getattr(exc.args[0], "code", lambda: None)() == KafkaError.GROUP_ID_NOT_FOUND:
            return 0
        raise
    return len(g.members)


def _table_key(raw: bytes | None) -> str | None:
    """A changelog record's key: the regional and flowcounts tables declare no key type, so Faust writes their
    string keys with its json serializer (``"flow"``, ``"0"``)."""
    if raw is None:
        return None
    try:
        key = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
    return key if isinstance(key, str) else raw.decode("utf-8", "replace")


def read_changelog(settings, topic: str, timeout: float = 60.0) -> dict[str, tuple[int, object]]:
    """The current value of each key of a table's changelog topic: {key: (partition, JSON value)}; a key whose
    last record is a deletion is left out. An absent topic has no keys."""
    import time
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from schemas.kafka_config import client_config

    c = Consumer(client_config(settings, **{"group.id": f"yrdbus-repair-{uuid.uuid4().hex[:8]}",
                                            "enable.auto.commit": False, "enable.partition.eof": False}))
    try:
        md = c.list_topics(topic, timeout=30).topics.get(topic)
        if md is None or md.error is not None:
            return {}
        ends = {}
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if hi > lo:
                ends[p] = hi
        if not ends:
            return {}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        found: dict[str, tuple[int, object]] = {}
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(ends)} not read to their end in {timeout:.0f} s")
            for m in c.consume(500, 1.0):
                if m.error():
                    continue
                key = _table_key(m.key())
                if key is not None:
                    if m.value() is None:
                        found.pop(key, None)
                    else:
                        try:
                            found[key] = (m.partition(), json.loads(m.value()))
                        except ValueError:
                            found.pop(key, None)
                if m.partition() in ends and m.offset() + 1 >= ends[m.partition()]:
                    del ends[m.partition()]
        return found
    finally:
        c.close()


def write_changelog(settings, topic: str, records: list[tuple[int, str, object]]) -> None:
    """(partition, key, value) records to a changelog topic, serialized as Faust writes these tables' (key and
    value with its json serializer; a value None is a deletion); raises unless the broker acknowledged every one."""
    from confluent_kafka import Producer

    from schemas.kafka_config import client_config

    errors = []
    p = Producer(client_config(settings, **{"enable.idempotence": True, "acks": "all"}))
    for partition, key, value in records:
        p.produce(topic, key=json.dumps(key).encode(),
                  value=None if value is None else json.dumps(value, separators=(",", ":")).encode(),
                  partition=partition, on_delivery=lambda err, _msg: err and errors.append(err))
    if p.flush(60) or errors:
        raise RuntimeError(f"{topic}: not every record was acknowledged: {errors or 'flush timed out'}")


def repair_watermark(app_id: str, *, dry_run: bool = False, json_out: bool = False) -> None:
    """`yrdbus worker repair-watermark`: see ``worker``."""
    from schemas.eventtime import EventTimeBounds

    settings = get_settings()
    bounds = EventTimeBounds.from_settings(settings)
    try:
        members = _group_members(settings, app_id)
    except Exception as exc:  # noqa: BLE001 - the admin client's errors name the broker's reason
        fail(f"cannot tell whether workers of {app_id} are running (consumer group {app_id}): {exc}")
    if members:
        fail(f"consumer group {app_id} has {members} active member(s): stop every `yrdbus worker --app-id {app_id}` "
              f"first (a killed worker's membership lapses after the session timeout, 10 s); a running worker "
              f"would overwrite the repair with its own state")
    try:
        current = {t: read_changelog(settings, changelog_topic(app_id, t)) for t in REPAIRED_TABLES}
    except Exception as exc:  # noqa: BLE001
        fail(f"cannot read the changelogs of {app_id} at {settings.bootstrap}: {exc}")
    repairs = plan_watermark_repair({t: {k: v for k, (_, v) in kv.items()} for t, kv in current.items()}, bounds)
    for r in repairs:
        r["topic"] = changelog_topic(app_id, r["table"])
        r["partition"] = current[r["table"]][r["key"]][0]
    if repairs and not dry_run:
        by_topic: dict[str, list] = {}
        for r in repairs:
            by_topic.setdefault(r["topic"], []).append((r["partition"], r["key"], r["value"]))
        try:
            for topic, records in by_topic.items():
                write_changelog(settings, topic, records)
        except Exception as exc:  # noqa: BLE001
            fail(f"cannot write the corrected records: {exc}")
    limit_ms = int(bounds.clock() * 1000) + bounds.skew_ms
    if json_out:
        typer.echo(json.dumps({
            "app_id": app_id, "dry_run": dry_run, "floor": _when(bounds.floor_ms), "limit": _when(limit_ms),
            "written": 0 if dry_run else len(repairs),
            "repairs": [{k: r[k] for k in ("table", "key", "topic", "partition", "changes")} for r in repairs]}))
        return
    if not repairs:
        typer.echo(f"{app_id}: no persisted event time outside [{_when(bounds.floor_ms)}, {_when(limit_ms)}]")
        return
    for r in repairs:
        typer.echo(f"{r['table']}[{r['key']}] ({r['topic']} partition {r['partition']}):")
        for change in r["changes"]:
            typer.echo(f"  {change}")
    typer.echo(f"dry run: nothing written ({len(repairs)} records would be)" if dry_run else
               f"{len(repairs)} corrected records written; the workers recover them at their next start")


def evaluate(
    truth: Path = typer.Option(..., "--truth", exists=True, dir_okay=False,
                               help="Ground-truth JSONL written by `yrdbus simulate --truth`."),
    alerts_file: Optional[Path] = typer.Option(None, "--alerts", exists=True, dir_okay=False,
                                               help="Read derived alerts from this JSONL file instead of the broker."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX", help="Topic prefix of the bus to read."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the broker."),
    json_out: bool = typer.Option(False, "--json", help="Print {precision, recall, scenarios, false_alerts} as JSON."),
) -> None:
    """Score the derived alerts (alerts.derived) against a ground-truth file: per scenario, detected or missed.

    The last version of each alert id (by emitted_at) counts; a withdrawn alert is neither a true nor a false
    alert, and is listed apart.
    """
    from schemas import topics
    from streams.evaluate import TruthError, load_truth, read_alerts_file, read_alerts_topic, score

    try:
        rows = load_truth(truth)
        if alerts_file:
            alerts = read_alerts_file(alerts_file)
        else:
            alerts = read_alerts_topic(get_settings().bootstrap, prefix + topics.DERIVED_ALERTS, timeout)
        result = score(rows, alerts)
    except TruthError as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{len(result['scenarios'])} scenarios, {result['alerts']} derived alerts"
                        + (f" ({result['withdrawn']} more withdrawn)" if result["withdrawn"] else ""))
    for col in ("scenario", "incident", "result", "delay (s)"):
        table.add_column(col)
    for sc in result["scenarios"]:
        missed = [r["expected_alert_kind"] for r in sc["rows"] if not r["matched"]]
        table.add_row(sc["scenario_id"], sc["scenario"] or "",
                      "[green]detected[/]" if sc["detected"] else f"[red]missed[/] {', '.join(missed)}",
                      "" if sc["delay_s"] is None else f"{sc['delay_s']:.3f}")
    console.print(table)
    for a in result["false_alerts"]:
        console.print(f"[yellow]false alert[/] {a['kind']} {a['occurred_at']} {','.join(a['regions'])} "
                      f"{a['summary']}")
    for a in result["withdrawn_alerts"]:
        console.print(f"[dim]withdrawn[/] {a['kind']} {a['occurred_at']} {a['summary']}: {a['reason'] or 'no reason given'}")
    console.print(f"precision {result['precision']:.3f}  recall {result['recall']:.3f}")


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("evaluate")(evaluate)
