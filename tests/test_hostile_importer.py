"""Hostile station exports: each hostile line is a rejection naming its line and rule, the rows after it are
imported, a line over the limit is never held whole, and a file that cannot be read has an exit status of its own.

No broker: the real ``StationPublisher`` (codec, topics, dead-letter headers) over ``FakeProducer``, which keeps
what it is given and confirms it as a broker would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

import connectors.publisher as publisher_module
from connectors.importer import (DEAD_LETTER_MAX_BYTES, DEAD_LETTER_PREFIX_BYTES, Importer,
                                 UnreadableFileError, read_csv)
from connectors.publisher import StationPublisher
from schemas.codec import get_codec
from schemas.deadletter import read_headers
from schemas.pseudonym import Pseudonymizer

ROOT = Path(__file__).resolve().parents[1]
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
KEY = b"test-subject-key-0123456789"
P = Pseudonymizer(KEY)
MiB = 1 << 20

ROW = {"region": "SH", "station_id": "SH-PVG", "port_code": "PVG", "occurred_at": "2017-06-05T01:12:40.000Z",
       "document_number": "E12345678", "document_country": "CHN", "name": "ZHANG WEI", "birth_date": "1985-03-14",
       "direction": "EXIT", "document_type": "PASSPORT", "nationality": "CHN", "conveyance_type": "FLIGHT",
       "conveyance_id": "MU523/2017-06-05", "lane": "E_GATE", "entry_basis": "CITIZEN", "decision": "CLEARED",
       "destination_country": "JPN"}
#: the document number of every hostile row: found in a dead letter, it leaked
SECRET = "E99887766"
CSV_HEADER = ("region,station_id,port_code,occurred_at,case_id,stage,case_type,method,document_numbers,"
              "document_countries,nationalities,persons,conveyance_type,conveyance_id,description")


# --------------------------------------------------------------------------- the test double
class FakeMessage:
    def __init__(self, topic, value, key, headers):
        self._topic, self._value, self._key, self._headers = topic, value, key, headers

    def topic(self):
        return self._topic

    def value(self):
        return self._value

    def key(self):
        return self._key

    def headers(self):
        return self._headers

    def latency(self):
        return None


class FakeProducer:
    """The part of ``confluent_kafka.Producer`` the publisher uses. Keeps every message; confirms (or, with
    ``fail``, fails) each on ``poll``/``flush``; refuses a message over ``message.max.bytes`` as librdkafka does."""

    fail = False

    def __init__(self, conf: dict):
        self.conf = conf
        self.messages: list[FakeMessage] = []
        self._waiting: list[tuple] = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **_):
        if value is not None and len(value) > int(self.conf.get("message.max.bytes", 1_000_000)):
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        msg = FakeMessage(topic, value, key, headers)
        self.messages.append(msg)
        self._waiting.append((msg, on_delivery or self.conf.get("on_delivery")))

    def poll(self, timeout=0):
        waiting, self._waiting = self._waiting, []
        for msg, report in waiting:
            if report is not None:
                report(KafkaError(KafkaError._MSG_TIMED_OUT) if self.fail else None, msg)
        return len(waiting)

    def flush(self, timeout=None):
        self.poll()
        return 0

    def __len__(self):
        return len(self._waiting)


def fake_publisher(prefix: str = "t.") -> StationPublisher:
    with mock.patch.object(publisher_module, "Producer", FakeProducer):
        return StationPublisher("fake:9092", topic_prefix=prefix, registry=CollectorRegistry())


def published(pub: StationPublisher) -> list[dict]:
    """The records the publisher put on the source topics, decoded."""
    return [get_codec().decode(m.value())[1] for m in pub._producer.messages if not m.topic().startswith("dlq.")]


def letters(pub: StationPublisher) -> list[tuple[str, bytes, dict]]:
    return [(m.topic(), m.value(), read_headers(m.headers()))
            for m in pub._producer.messages if m.topic().startswith("dlq.")]


def good(i: int) -> dict:
    return {**ROW, "document_number": f"G{i:08d}"}


def hostile(**fields) -> dict:
    return {**ROW, "document_number": SECRET, **fields}


def jsonl(*lines) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


@pytest.fixture
def pub():
    p = fake_publisher()
    yield p
    p.close()


# --------------------------------------------------------------------------- JSONL
def test_each_hostile_jsonl_line_is_a_rejection_and_the_rows_after_it_are_imported(pub, tmp_path):
    f = tmp_path / "sh-clearances.jsonl"
    row = json.dumps(hostile())
    lines = [
        good(1),                                                            # 1
        b"[" * 100_000,                                                     # 2: deep
        good(3),                                                            # 3
        row[:-1].encode() + b', "persons": ' + b"7" * 5000 + b"}",          # 4: a 5,000-digit number
        good(5),                                                            # 5
        row[:-1].encode() + b', "conveyance_id": "' + b"x" * (3 * MiB) + b'"}',  # 6: a 3 MB line
        good(7),                                                            # 7
        row.replace('"EXIT"', "NaN").encode(),                              # 8: NaN
        row.replace("MU523", "MU\xff").encode("latin-1"),                   # 9: not UTF-8
        row.replace("MU523", "MU\x00").encode(),                            # 10: a NUL byte
        row[:-1].encode() + b', "lane": "MANUAL"}',                         # 11: a key twice
        row.replace("MU523", "MU\\ud800").encode(),                         # 12: a lone surrogate, escaped
        row.replace('"JPN"', "1e999").encode(),                             # 13: infinity
        b'[{"region": "SH"}]',                                              # 14: not an object
        b"   ",                                                             # 15: blank, not a row
        json.dumps(good(16)).encode() + b"\r",                              # 16: a CRLF line end
        b'{"document_number": "' + SECRET.encode() + b'", "region": "SH", ' + b'"x": ' + b"{" * 70,  # 17: deep
        good(18),                                                           # 18
    ]
    f.write_bytes(jsonl(*lines).rstrip(b"\n"))                             # the last line without its end
    rejected = []
    result = Importer(pub, P, "clearance", max_line_bytes=MiB).run(f, on_reject=rejected.append)

    assert (result.rows, result.published, result.rejected) == (17, 6, 11)
    assert [r["subject"] for r in published(pub)] == [P.subject("CHN", f"G{i:08d}") for i in (1, 3, 5, 7, 16, 18)]
    assert [(r.line, r.field, r.reason) for r in rejected] == [
        (2, None, "too_deep"), (4, "persons", "bad_number"), (6, None, "too_large"), (8, "direction", "bad_number"),
        (9, None, "undecodable"), (10, None, "bad_text"), (11, None, "duplicate_key"),
        (12, "conveyance_id", "bad_text"), (13, "destination_country", "bad_number"), (14, None, "invalid"),
        (17, None, "too_deep")]
    messages = [r.message for r in rejected]
    # 100,000 bytes: more than a dead letter carries whole (64 KiB), so it carries its first 4 KiB and says so
    assert messages[0] == "line 2: JSON nested deeper than 64 levels; its dead letter keeps the first 4,096 bytes"
    assert messages[1].startswith("line 4, field `persons`: a number of 5,000 digits, over the limit of 100")
    assert messages[2] == (f"line 6: line is {len(lines[5]):,} bytes, over the 1 MiB limit "
                           f"(YRDBUS_IMPORT_MAX_LINE_BYTES); skipped unread, its dead letter keeps the first "
                           f"4,096 bytes")
    assert messages[3].startswith("line 8, field `direction`: NaN is not a number JSON allows")
    assert messages[4].startswith("line 9: not UTF-8 text: invalid start byte (byte ")
    assert messages[5].startswith("line 10: contains a NUL byte (byte ")
    assert messages[6] == "line 11: key 'lane' appears twice in one object"
    assert messages[7] == ("line 12, field `conveyance_id`: contains '\\ud800', a lone UTF-16 surrogate, "
                           "which is not text")
    assert messages[8].startswith("line 13, field `destination_country`: a number too large to be finite")
    assert messages[9] == "line 14: expected a JSON object, got array"

    sent = letters(pub)
    assert [h["error"] for _, _, h in sent] == messages          # every rejection is dead-lettered, in order
    assert all(SECRET.encode() not in value for _, value, _ in sent)
    assert all(len(value) <= DEAD_LETTER_MAX_BYTES for _, value, _ in sent)
    topic, big, _ = sent[2]                                       # the 3 MB line: 4 KiB of it, identity redacted
    # its first 4,096 bytes, with the identities in them redacted ("<redacted>" may be longer than what it hides)
    assert topic == "dlq.t.import" and DEAD_LETTER_PREFIX_BYTES <= len(big) <= DEAD_LETTER_PREFIX_BYTES + 8
    assert b"ZHANG" not in big and b"1985-03-14" not in big and big.endswith(b"x" * 100)
    assert big.startswith(b'{"region": "SH", "station_id": "SH-PVG"') and b'"document_number": "<redacted>"' in big
    assert sent[1][0] == "dlq.t.border.SH.clearance"              # parsed, so its region is known
    assert b'"document_number": "<redacted>"' in sent[-1][1]      # redacted, not dropped, in a line that did not parse
    assert (result.delivered, result.failed) == (6 + 11, 0)


def test_an_event_too_large_for_the_bus_is_a_rejection_with_a_bounded_dead_letter(pub, tmp_path):
    f = tmp_path / "clearances.jsonl"
    huge = hostile(conveyance_id="C" * 1_010_000)                 # within 1 MiB, over the producer's 1,000,000 bytes
    f.write_bytes(jsonl(huge, good(2)))
    rejected = []
    result = Importer(pub, P, "clearance", max_line_bytes=MiB).run(f, on_reject=rejected.append)
    assert (result.rows, result.published, result.rejected) == (2, 1, 1)
    assert rejected[0].message == ("line 1: the event is too large for the bus: over the producer's "
                                   "message.max.bytes; its dead letter keeps the first 4,096 bytes")
    (_, value, _), = letters(pub)
    assert len(value) == DEAD_LETTER_PREFIX_BYTES and SECRET.encode() not in value
    assert published(pub)[0]["subject"] == P.subject("CHN", "G00000002")


def test_bom_crlf_and_blank_lines_are_read_as_text(pub, tmp_path):
    f = tmp_path / "clearances.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + jsonl(good(1)).replace(b"\n", b"\r\n") + b"\r\n  \n" + jsonl(good(2)))
    result = Importer(pub, P, "clearance").run(f)
    assert (result.rows, result.published, result.rejected) == (2, 2, 0)


def test_a_first_line_over_the_limit_after_a_bom_is_skipped_whole(pub, tmp_path):
    f = tmp_path / "clearances.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(hostile(conveyance_id="x" * 5000)).encode() + b"\n" + jsonl(good(2)))
    rejected = []
    result = Importer(pub, P, "clearance", max_line_bytes=4096).run(f, on_reject=rejected.append)
    assert (result.rows, result.published, result.rejected) == (2, 1, 1)
    assert rejected[0].line == 1 and rejected[0].reason == "too_large"
    assert published(pub)[0]["subject"] == P.subject("CHN", "G00000002")


@pytest.mark.parametrize("content", [b"", b"\n\n   \n\r\n"])
@pytest.mark.parametrize("name", ["clearances.jsonl", "cases.csv"])
def test_an_empty_file_or_one_of_blank_lines_imports_nothing_and_is_no_error(pub, tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    result = Importer(pub, P, "case" if name.endswith(".csv") else "clearance").run(f)
    assert (result.rows, result.published, result.rejected) == (0, 0, 0)
    assert pub._producer.messages == []


# --------------------------------------------------------------------------- CSV
def case_row(i: int, **cells) -> str:
    values = dict(zip(CSV_HEADER.split(","), (
        "ZJ", "ZJ-NBZS", "CNNGB", "2017-06-05T03:40:00Z", f"ZJ-2017-{i:06d}", "OPENED", "STOWAWAY",
        "STOWAWAY_ON_VESSEL", f"B{i:07d};B7654321", "MMR;MMR", "MMR;MMR", "2", "VESSEL", "IMO9321483/17E", "found")))
    values.update(cells)
    return ",".join(values.values())


def test_each_hostile_csv_row_is_a_rejection_and_the_rows_after_it_are_imported(pub, tmp_path):
    f = tmp_path / "zj-cases.csv"
    limit = 64 * 1024
    lines = [
        CSV_HEADER.encode(),                                                         # 1
        case_row(2).encode(),                                                        # 2
        b"ZJ,ZJ-NBZS,CNNGB",                                                         # 3: ragged
        case_row(4, persons="7" * 5000).encode(),                                    # 4: 5,000 digits
        case_row(5, persons="NaN").encode(),                                         # 5
        case_row(6, description="a\x00b").encode(),                                  # 6: NUL
        case_row(7, description="caf\xe9").encode("latin-1"),                        # 7: not UTF-8
        case_row(8, description="x" * 40_000).encode(),                              # 8: long, within the limit
        case_row(9, description="y" * 200_000, document_numbers=f"{SECRET};B1").encode(),  # 9: over the limit
        case_row(10, description="a\rb").encode(),                                   # 10: a bare CR
        case_row(11, occurred_at="9" * 5000).encode(),                               # 11: epoch ms of 5,000 digits
        case_row(12).encode(),                                                       # 12
        b"",                                                                         # 13: blank
        case_row(14).encode(),                                                       # 14 (CRLF, below)
        case_row(15, description='"never closed').encode(),                         # 15: swallows what follows
    ] + [case_row(16 + i).encode() for i in range(700)] + [case_row(9999).encode()]
    data = b"\n".join(lines[:13]) + b"\n" + lines[13] + b"\r\n" + b"\n".join(lines[14:]) + b"\n"
    f.write_bytes(data)
    rejected = []
    result = Importer(pub, P, "case", max_line_bytes=limit).run(f, on_reject=rejected.append)
    assert [(r.line, r.reason) for r in rejected] == [
        (3, "invalid"), (4, "bad_number"), (5, "invalid"), (6, "bad_text"), (7, "undecodable"), (9, "too_large"),
        (10, "undecodable"), (11, "bad_number"), (15, "too_large")]
    messages = [r.message for r in rejected]
    assert messages[0] == "line 3: has 3 cells, the header has 15 columns"
    assert messages[1].startswith("line 4, field `persons`: a number of 5,000 digits, over the limit of 100")
    assert messages[2] == "line 5, field `persons`: expected an integer, got 'NaN'"
    assert messages[3] == f"line 6: contains a NUL byte (byte {lines[5].index(0) + 1})"
    assert messages[4].startswith("line 7: not UTF-8 text: invalid continuation byte (byte ")
    assert messages[5] == (f"line 9: line is {len(lines[8]):,} bytes, over the 64 KiB limit "
                           f"(YRDBUS_IMPORT_MAX_LINE_BYTES); skipped unread, its dead letter keeps the first "
                           f"4,096 bytes")
    assert messages[6] == "line 10: a carriage return (\\r) inside an unquoted cell; lines end with \\n or \\r\\n"
    assert messages[7].startswith("line 11, field `occurred_at`: a number of 5,000 digits")
    assert messages[8].startswith("line 15: a CSV row over lines 15-")
    assert "a quoted cell that never closes?" in messages[8]
    cases = [r["case_id"] for r in published(pub)]
    # rows 16.. are inside the unclosed quote until the row reaches the limit; the rows after it are read again
    assert cases[:4] == ["ZJ-2017-000002", "ZJ-2017-000008", "ZJ-2017-000012", "ZJ-2017-000014"]
    assert cases[-1] == "ZJ-2017-009999" and len(cases) > 5
    assert result.rows == result.published + result.rejected
    assert all(SECRET.encode() not in value and len(value) <= DEAD_LETTER_MAX_BYTES for _, value, _ in letters(pub))


def test_a_csv_cell_over_the_readers_field_limit_is_a_rejection(pub, tmp_path):
    f = tmp_path / "zj-cases.csv"
    f.write_text("\n".join([CSV_HEADER, case_row(2, description="z" * 140_000), case_row(3)]) + "\n")
    rejected = []
    Importer(pub, P, "case").run(f, on_reject=rejected.append)
    assert [r.message for r in rejected] == [
        "line 2: a cell is over 131,072 characters, the CSV reader's limit (csv.field_size_limit)"]
    assert [r["case_id"] for r in published(pub)] == ["ZJ-2017-000003"]


@pytest.mark.parametrize("content, said", [
    (b"ZJ,ZJ-NBZS,CNNGB,x\nZJ,ZJ-NBZS,CNNGB,y\n", "line 1: no CSV header: the first row names no field of a case"),
    (b"region,case_id,region\n", "line 1: the CSV header names the column 'region' twice"),
    (b"\n\nregion,case_\xffid\n", "line 3: the CSV header cannot be read: not UTF-8 text: invalid start byte"),
    (b"region," + b"c" * 5000 + b"\n", "line 1: the CSV header cannot be read: line is 5,007 bytes, over the 4 KiB"),
])
def test_a_csv_without_a_usable_header_cannot_be_read(pub, tmp_path, content, said):
    f = tmp_path / "cases.csv"
    f.write_bytes(content)
    with pytest.raises(UnreadableFileError) as err:
        Importer(pub, P, "case", max_line_bytes=4096).run(f)
    assert str(err.value).startswith(f"{f}: {said}")
    assert pub._producer.messages == []


def test_a_csv_with_a_header_only_has_no_rows(tmp_path):
    f = tmp_path / "cases.csv"
    f.write_bytes(b"\xef\xbb\xbf" + CSV_HEADER.encode() + b"\r\n")
    with open(f, "rb") as fh:
        assert list(read_csv(fh, "case")) == []


# --------------------------------------------------------------------------- files that cannot be read
def unreadable_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error says after the path)"""
    (tmp_path / "dir.jsonl").mkdir()
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "device.jsonl").symlink_to("/dev/zero")
    (tmp_path / "packed.jsonl").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    (tmp_path / "utf16.jsonl").write_bytes('{"region": "SH"}\n'.encode("utf-16"))
    (tmp_path / "utf16-no-bom.csv").write_bytes("region,case_id\nZJ,ZJ-1\n".encode("utf-16-le"))
    (tmp_path / "export.txt").write_text(json.dumps(ROW) + "\n")
    return {
        "missing": (tmp_path / "missing.jsonl", "no such file"),
        "directory": (tmp_path / "dir.jsonl", "is a directory, not an export file"),
        "fifo": (tmp_path / "fifo.jsonl", "is a FIFO (named pipe), not a regular file"),
        "device": (tmp_path / "device.jsonl", "is a device, not a regular file"),
        "gzip": (tmp_path / "packed.jsonl", "not UTF-8 text: the file is gzip-compressed"),
        "utf16": (tmp_path / "utf16.jsonl", "not UTF-8 text: the file is UTF-16 text"),
        "utf16-no-bom": (tmp_path / "utf16-no-bom.csv", "not UTF-8 text: 23 NUL bytes in its first 46 bytes"),
        "format": (tmp_path / "export.txt", "cannot tell the format from the name"),
    }


def test_a_file_that_cannot_be_read_is_said_in_one_line_and_nothing_is_published(pub, tmp_path):
    for name, (path, said) in unreadable_files(tmp_path).items():
        with pytest.raises(UnreadableFileError) as err:       # a FIFO would block here if it were opened
            Importer(pub, P, "clearance").run(path)
        assert str(err.value).startswith(f"{path}: {said}"), name
        assert "\n" not in str(err.value)
    assert pub._producer.messages == []


def test_permission_denied_is_said(pub, tmp_path):
    f = tmp_path / "clearances.jsonl"
    f.write_bytes(jsonl(good(1)))
    # the tests may run as root, who reads any file: the refusal the kernel would give, given
    with mock.patch("connectors.importer.os.open", side_effect=PermissionError(13, "Permission denied")):
        with pytest.raises(UnreadableFileError) as err:
            Importer(pub, P, "clearance").run(f)
    assert str(err.value) == f"{f}: permission denied"


# --------------------------------------------------------------------------- memory
MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    from connectors.importer import Importer
    from schemas.pseudonym import Pseudonymizer

    class Publisher:
        prefix = ""
        def __init__(self):
            self.published, self.letters = [], []
        def publish(self, kind, record):
            self.published.append(record["subject"])
        def dead_letter(self, source, raw, error):
            self.letters.append((len(raw), str(error)))
            return "dlq." + source
        def flush(self):
            return 0
        def stats(self):
            return {"delivered": len(self.published) + len(self.letters), "failed": 0}

    pub = Publisher()
    importer = Importer(pub, Pseudonymizer(b"k" * 32), "clearance", max_line_bytes=1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    result = importer.run(sys.argv[1])
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": after - before, "traced_peak": traced_peak, "rows": result.rows,
                      "published": len(pub.published), "letters": pub.letters}))
""")


def test_a_200_mb_line_is_refused_without_being_held(tmp_path):
    f = tmp_path / "clearances.jsonl"
    size = 200_000_000
    with open(f, "wb") as out:
        out.write(jsonl(good(1)))
        start = json.dumps(hostile())[:-1].encode() + b', "conveyance_id": "'
        out.write(start)
        block = b"x" * MiB
        left = size - len(start) - 2
        while left > 0:
            out.write(block[:left])
            left -= len(block)
        out.write(b'"}\n')
        out.write(jsonl(good(3)))
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(f)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert (got["rows"], got["published"]) == (3, 2)              # the row after the 200 MB line is imported
    (kept, error), = got["letters"]
    assert DEAD_LETTER_PREFIX_BYTES <= kept <= DEAD_LETTER_PREFIX_BYTES + 8     # its first 4 KiB, redacted
    assert error.startswith("line 2: line is 200,000,000 bytes, over the 1 MiB limit (YRDBUS_IMPORT_MAX_LINE_BYTES)")
    # the peak of the process (ru_maxrss) and of Python's allocations while importing: a few MiB (one line of at
    # most the 1 MiB limit, read in pieces), not the 200 MB of the line
    assert got["grew_kib"] < 24 * 1024 and got["traced_peak"] < 8 * MiB, got


# --------------------------------------------------------------------------- the command's exit statuses
def run_cli(*args, env=None):
    env = {**os.environ, "YRDBUS_SUBJECT_KEY": KEY.decode(), **(env or {})}
    env.pop("YRDBUS_DEMO", None)
    return subprocess.run([YRDBUS, "publish", *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_command_exits_3_on_a_file_it_cannot_read_before_asking_for_a_broker(tmp_path):
    files = unreadable_files(tmp_path)
    env = {"YRDBUS_KAFKA_BOOTSTRAP": "127.0.0.1:9"}             # no broker answers there: 3 comes first
    path, said = files["missing"]
    done = run_cli("--file", str(path), env=env)
    assert done.returncode == 3
    assert done.stderr == f"error: {path}: {said}\n"
    path, said = files["fifo"]
    done = run_cli("--file", str(path), "--json", env=env)
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout) == {"file": str(path), "error": f"{path}: {said}; write the export to a file first",
                                       "exit_status": 3}


def test_no_broker_is_one_line_with_exit_status_4_and_advice_that_fits_the_configuration(tmp_path):
    from conftest import free_port

    good = tmp_path / "ok.csv"
    good.write_text("event_id,region\n")
    env = {**os.environ, "YRDBUS_SUBJECT_KEY": KEY.decode(), "YRDBUS_VAR_DIR": str(tmp_path / "var")}
    env.pop("YRDBUS_DEMO", None)
    external = dict(env, YRDBUS_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    embedded = {k: v for k, v in env.items() if k != "YRDBUS_KAFKA_BOOTSTRAP"}
    embedded["YRDBUS_KAFKA_PORT"] = str(free_port())
    runs = {name: subprocess.Popen([YRDBUS, "publish", "--file", str(good), "--kind", "clearance"], env=e,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, e in (("external", external), ("embedded", embedded))}
    said = {name: p.communicate(timeout=60) + (p.returncode,) for name, p in runs.items()}
    for name, (out, err, code) in said.items():
        assert code == 4, (name, code, err[-2000:])
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: no Kafka broker answers at "), err[-2000:]
    assert "YRDBUS_KAFKA_BOOTSTRAP" in said["external"][1] and "stack up" not in said["external"][1]
    assert "`yrdbus stack up`" in said["embedded"][1]


@pytest.fixture
def cli(monkeypatch):
    """`yrdbus publish` in this process, on FakeProducer, with no broker to reach."""
    from typer.testing import CliRunner

    import yrdbus.cli_stations as cli_stations
    from schemas import topics
    from schemas.settings import get_settings
    from yrdbus.cli import app

    monkeypatch.setattr(publisher_module, "Producer", FakeProducer)
    monkeypatch.setattr(cli_stations, "_reachable", lambda bootstrap: None)
    monkeypatch.setattr(topics, "ensure", lambda *a, **k: None)
    monkeypatch.setenv("YRDBUS_SUBJECT_KEY", KEY.decode())
    monkeypatch.delenv("YRDBUS_DEMO", raising=False)
    get_settings.cache_clear()

    def invoke(*args):
        done = CliRunner().invoke(app, ["publish", *args, "--metrics-port", "0", "--prefix", "t."])
        assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
        return done

    yield invoke
    get_settings.cache_clear()


def test_the_command_exits_0_when_all_is_published_1_on_rejects_and_2_on_failed_deliveries(cli, tmp_path, monkeypatch):
    ok = tmp_path / "sh-clearances.jsonl"
    ok.write_bytes(jsonl(good(1), good(2)))
    done = cli("--file", str(ok), "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["published"], summary["rejected"], summary["exit_status"]) == (2, 0, 0)

    bad = tmp_path / "sh-clearances-2.jsonl"
    bad.write_bytes(jsonl(good(1), b"[" * 1000, good(3)))
    done = cli("--file", str(bad), "--json")
    assert done.exit_code == 1
    summary = json.loads(done.stdout)
    assert (summary["published"], summary["rejected"], summary["exit_status"]) == (2, 1, 1)
    assert summary["rejections"] == [{"line": 2, "field": None, "reason": "too_deep",
                                      "message": "line 2: JSON nested deeper than 64 levels"}]
    assert "rejected line 2: JSON nested deeper than 64 levels" in done.stderr
    marked = tmp_path / "sh-clearances-markup.jsonl"                # a row's text is no markup of the terminal's
    marked.write_bytes(jsonl(hostile(direction="[/x]"), good(2)))
    done = cli("--file", str(marked))
    assert done.exit_code == 1 and "expected ENTRY or EXIT, got '[/x]'" in done.stderr, done.output
    done = cli("--file", str(bad), "--json", "--allow-rejects")
    assert done.exit_code == 0 and json.loads(done.stdout)["exit_status"] == 0

    empty = tmp_path / "sh-clearances-3.jsonl"
    empty.write_bytes(b"")
    done = cli("--file", str(empty))
    assert done.exit_code == 0 and "0 rows" in done.stdout and "the file holds no rows" in done.stdout

    monkeypatch.setattr(FakeProducer, "fail", True)
    done = cli("--file", str(ok), "--json")
    assert done.exit_code == 2 and json.loads(done.stdout)["exit_status"] == 2


def test_the_command_exits_3_when_the_csv_header_cannot_be_read(cli, tmp_path):
    f = tmp_path / "zj-cases.csv"
    f.write_bytes(b"ZJ,ZJ-NBZS,CNNGB\n")
    done = cli("--file", str(f), "--json")
    assert done.exit_code == 3
    assert json.loads(done.stdout)["error"].startswith(f"{f}: line 1: no CSV header")


def test_the_command_exits_3_on_each_file_it_cannot_read_and_says_so_in_its_help(cli, tmp_path):
    for name, (path, said) in unreadable_files(tmp_path).items():
        done = cli("--file", str(path), "--kind", "clearance")
        assert done.exit_code == 3, (name, done.output)
        assert done.stderr.startswith(f"error: {path}: {said}") and done.stderr.count("\n") == 1, name
        done = cli("--file", str(path), "--kind", "clearance", "--json")
        out = json.loads(done.stdout)
        assert done.exit_code == 3 and (out["file"], out["exit_status"]) == (str(path), 3), name
        assert out["error"].startswith(f"{path}: {said}"), name
    helped = cli("--help").stdout
    for status in ("0  every row was published", "1  rows were rejected", "2  deliveries failed",
                   "3  the file cannot be read at all"):
        assert status in helped
