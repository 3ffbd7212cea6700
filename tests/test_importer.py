"""Importing a station's export: tokens instead of identities, exact rejections, dead letters, exit status."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from connectors.importer import Importer, RowImporter, infer_kind, read_csv
from connectors.publisher import StationPublisher
from schemas import topics
from schemas.codec import get_codec
from schemas.deadletter import read_headers
from schemas.errors import EventError
from schemas.pseudonym import Pseudonymizer

ROOT = Path(__file__).resolve().parents[1]
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
KEY = b"test-subject-key-0123456789"
P = Pseudonymizer(KEY)

ROW = {"region": "SH", "station_id": "SH-PVG", "port_code": "PVG", "occurred_at": "2017-06-05T01:12:40.000Z",
       "document_number": "E12345678", "document_country": "CHN", "name": "ZHANG WEI", "birth_date": "1985-03-14",
       "direction": "EXIT", "document_type": "PASSPORT", "nationality": "CHN", "conveyance_type": "FLIGHT",
       "conveyance_id": "MU523/2017-06-05", "lane": "E_GATE", "entry_basis": "CITIZEN", "decision": "CLEARED",
       "destination_country": "JPN"}


def high_watermark(consumer, tp, tries: int = 50) -> int:
    """The end offset of ``tp``; a just-created topic may answer 'not leader' for a moment."""
    for _ in range(tries):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException:
            time.sleep(0.2)
    return consumer.get_watermark_offsets(tp, timeout=10)[1]


def consume_all(bootstrap: str, names: list[str]) -> dict[str, list]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    md = c.list_topics(timeout=10)
    parts = [TopicPartition(t, p, 0) for t in names if t in md.topics for p in md.topics[t].partitions]
    ends = {(tp.topic, tp.partition): high_watermark(c, tp) for tp in parts}
    c.assign(parts)
    out: dict[str, list] = defaultdict(list)
    left = {k for k, v in ends.items() if v > 0}
    while left:
        msg = c.poll(10)
        assert msg is not None and not msg.error()
        out[msg.topic()].append(msg)
        if msg.offset() + 1 >= ends[(msg.topic(), msg.partition())]:
            left.discard((msg.topic(), msg.partition()))
    c.close()
    return out


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.fixture
def bus(kafka, unique):
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    pub = StationPublisher(kafka.bootstrap, topic_prefix=prefix, registry=CollectorRegistry())
    yield kafka.bootstrap, prefix, pub
    pub.close()


# --------------------------------------------------------------------------- pure
def test_the_kind_is_read_from_the_file_name_when_not_given():
    assert infer_kind("sh-pvg-clearances-2017-06-05.jsonl") == "clearance"
    assert infer_kind("/x/ZJ_alerts.csv") == "alert"
    assert infer_kind("zj-cases-2017-06.csv") == "case"
    assert infer_kind("export.jsonl") is None and infer_kind("alerts-and-cases.csv") is None


def test_raw_identities_become_tokens_and_the_same_row_always_gets_the_same_event_id():
    imp = RowImporter("clearance", P)
    rec = imp.record(ROW)
    assert rec["subject"] == P.subject("CHN", "E12345678")
    assert rec["name_token"] == P.name("ZHANG WEI", "1985-03-14")
    assert not {"document_number", "name", "birth_date"} & set(rec)
    assert imp.record(ROW)["event_id"] == rec["event_id"]
    assert imp.record({**ROW, "occurred_at": "2017-06-05T01:12:41.000Z"})["event_id"] != rec["event_id"]


def test_a_station_s_region_rejects_rows_of_another_region():
    with pytest.raises(EventError) as err:
        RowImporter("clearance", P, region="JS").record(ROW)
    assert str(err.value) == "field `region`: this import is for region JS (--region), the row says 'SH'"


# --------------------------------------------------------------------------- on the broker
def test_a_jsonl_export_is_published_with_tokens_and_no_identity_reaches_the_bus(bus, tmp_path):
    bootstrap, prefix, pub = bus
    f = tmp_path / "sh-pvg-clearances.jsonl"
    second = {**ROW, "document_number": "X1234567", "document_country": "USA", "nationality": "USA",
              "name": "Jane Example", "entry_basis": "VISA", "lane": "MANUAL", "direction": "ENTRY",
              "destination_country": None, "origin_country": "USA"}
    f.write_text(lines(ROW, "", second))
    result = Importer(pub, P, "clearance").run(f)
    assert (result.rows, result.published, result.rejected, result.failed) == (2, 2, 0, 0)

    got = consume_all(bootstrap, [prefix + topics.source("SH", "clearance")])
    msgs = got[prefix + topics.source("SH", "clearance")]
    assert len(msgs) == 2
    records = [get_codec().decode(m.value())[1] for m in msgs]
    assert {r["subject"] for r in records} == {P.subject("CHN", "E12345678"), P.subject("USA", "X1234567")}
    assert {m.key().decode() for m in msgs} == {r["subject"] for r in records}
    for m in msgs:
        for secret in (b"E12345678", b"X1234567", b"ZHANG", b"Jane", b"1985-03-14"):
            assert secret not in m.value() and secret not in (m.key() or b"")


def test_bad_lines_are_rejected_with_line_field_and_reason_and_go_to_the_dead_letter_topic(bus, tmp_path):
    bootstrap, prefix, pub = bus
    f = tmp_path / "clearances.jsonl"
    missing_lane = {k: v for k, v in ROW.items() if k != "lane"}
    f.write_text(lines(
        ROW,                                           # 1: fine
        {**ROW, "direction": "IN"},                    # 2
        '{"region": "SH" "station_id": "SH-PVG"}',      # 3
        missing_lane,                                  # 4
        {**ROW, "port_code": "HGH"},                   # 5
        {**ROW, "document_country": "XYZ"},            # 6
        {**ROW, "occurred_at": "2017-06-05 01:12"},    # 7
        {**ROW, "region": "JS", "station_id": "JS-NKG", "port_code": "NKG", "document_number": "E7"},  # 8: fine
    ))
    rejected = []
    result = Importer(pub, P, "clearance").run(f, on_reject=rejected.append)
    assert (result.rows, result.published, result.rejected) == (8, 2, 6)
    assert [r.message for r in rejected] == [
        "line 2, field `direction`: expected ENTRY or EXIT, got 'IN'",
        "line 3: not JSON: Expecting ',' delimiter (column 17)",
        "line 4, field `lane`: required, but absent",
        "line 5, field `port_code`: port HGH is a port of ZJ, not of SH",
        "line 6, field `document_country`: expected the issuing country as an ISO 3166-1 alpha-3 code (e.g. CHN, USA)",
        "line 7, field `occurred_at`: an ISO-8601 time needs its offset ('Z' for UTC), got '2017-06-05 01:12'",
    ]
    assert [(r.line, r.field, r.reason) for r in rejected][:3] == [
        (2, "direction", "bad_enum"), (3, None, "undecodable"), (4, "lane", "missing_field")]

    sh, js = prefix + topics.source("SH", "clearance"), prefix + topics.source("JS", "clearance")
    unplaced = topics.dead_letter(prefix + "import")       # a line that is not JSON names no region
    got = consume_all(bootstrap, [topics.dead_letter(sh), unplaced, sh, js])
    assert len(got[sh]) == len(got[js]) == 1
    letters = got[topics.dead_letter(sh)]
    assert [read_headers(m.headers())["error"] for m in letters] == [r.message for r in rejected if r.line != 3]
    assert [read_headers(m.headers())["reason"] for m in letters][:2] == ["bad_enum", "missing_field"]
    assert [read_headers(m.headers())["error"] for m in got[unplaced]] == [rejected[1].message]
    assert got[unplaced][0].value() == b'{"region": "SH" "station_id": "SH-PVG"}'
    # the original row travels with its identity fields redacted: the dead-letter topic is on the bus too
    first = json.loads(letters[0].value())
    assert first["direction"] == "IN" and first["document_number"] == first["name"] == "<redacted>"
    assert all(b"E12345678" not in m.value() and b"ZHANG" not in m.value() for m in letters)


def test_a_csv_export_with_arrays_and_numbers_imports_cases(bus):
    bootstrap, prefix, pub = bus
    f = ROOT / "docs" / "examples" / "zj-cases-2017-06.csv"
    result = Importer(pub, P, "case").run(f)
    assert (result.rows, result.published, result.rejected) == (2, 2, 0)
    msgs = consume_all(bootstrap, [prefix + topics.source("ZJ", "case")])[prefix + topics.source("ZJ", "case")]
    records = [get_codec().decode(m.value())[1] for m in msgs]
    assert [r["stage"] for r in records] == ["OPENED", "DETAINED"]
    assert all(r["subjects"] == [P.subject("MMR", "B1234567"), P.subject("MMR", "B7654321")] for r in records)
    assert all(r["persons"] == 2 and r["nationalities"] == ["MMR", "MMR"] for r in records)
    assert {m.key() for m in msgs} == {b"ZJ-2017-000123"}


def test_csv_rows_are_numbered_by_their_line_and_bad_cells_are_named(tmp_path):
    f = tmp_path / "cases.csv"
    f.write_text("region,case_id,persons\nZJ,ZJ-1,two\n\nZJ,ZJ-2,1,extra\n")
    with open(f, "rb") as fh:
        rows = list(read_csv(fh, "case"))
    assert [(r.line, str(r.error)) for r in rows] == [
        (2, "line 2, field `persons`: expected an integer, got 'two'"),
        (4, "line 4: has 4 cells, the header has 3 columns")]


def test_the_publish_command_exits_non_zero_on_rejects_unless_allowed(kafka, unique, tmp_path):
    prefix = f"{unique}."
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap, "YRDBUS_SUBJECT_KEY": KEY.decode()}
    env.pop("YRDBUS_DEMO", None)

    def publish(*args):
        return subprocess.run([YRDBUS, "publish", *args, "--prefix", prefix, "--json"], env=env,
                              capture_output=True, text=True, timeout=60)

    ok = publish("--file", str(ROOT / "docs" / "examples" / "sh-pvg-clearances-2017-06-05.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["published"] == 3

    bad = tmp_path / "sh-alerts.jsonl"
    bad.write_text(lines({"region": "SH", "station_id": "SH-PVG", "port_code": "PVG", "kind": "SMUGGLED",
                          "severity": "HIGH", "source": "OFFICER", "occurred_at": "2017-06-05T02:00:00Z"}))
    refused = publish("--file", str(bad))
    assert refused.returncode == 1
    summary = json.loads(refused.stdout)
    assert (summary["kind"], summary["rejected"], summary["published"]) == ("alert", 1, 0)
    assert "line 1, field `kind`: expected one of WATCHLIST_HIT" in refused.stderr
    assert publish("--file", str(bad), "--allow-rejects").returncode == 0
