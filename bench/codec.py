"""Codec throughput per core: ClearanceEvent through ``schemas.codec`` beside bare fastavro, same records, same run.

* encode: ``Codec.encode("clearance", record)`` (validation, Confluent framing, Avro body) against
  ``schemaless_writer(BytesIO(), schema, record)`` + ``getvalue()``;
* decode: ``Codec.decode(framed)`` (framing, schema id look-up, Avro body, leftover check) against
  ``schemaless_reader(BytesIO(body), schema)``;
* projected decode: ``Codec.projected_decoder("clearance", 4 fields)``.

One process, one thread: a rate per core. Each figure is the median of 5 runs over the same records;
the paths alternate every 500 records so that drift of a shared machine hits all of them alike.
"""
from __future__ import annotations

import io
import random
import time
import uuid
from datetime import datetime, timedelta, timezone

from fastavro import schemaless_reader, schemaless_writer

import bench
from schemas import contract, reference
from schemas.codec import Codec
from schemas.pseudonym import DEMO_KEY, Pseudonymizer

RUNS = 5
RECORDS = 20_000
PROJECTED = ("subject", "region", "port_code", "occurred_at")


def clearances(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    p = Pseudonymizer(DEMO_KEY)
    ports = list(reference.ports().values())
    countries = ["USA", "JPN", "KOR", "DEU", "FRA", "GBR", "RUS", "THA", "VNM", "AUS", "CHN"]
    base = datetime(2017, 6, 1, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        port = rnd.choice(ports)
        t = base + timedelta(milliseconds=rnd.randrange(0, 86_400_000))
        nat = rnd.choice(countries)
        out.append({
            "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "region": port.region, "station_id": port.station_id, "port_code": port.code,
            "occurred_at": t, "published_at": t + timedelta(seconds=2),
            "subject": p.subject(nat, f"E{i:08d}"), "name_token": p.name(f"Traveller {i}") if i % 3 else None,
            "direction": rnd.choice(["ENTRY", "EXIT"]), "document_type": "PASSPORT",
            "document_country": nat, "nationality": nat,
            "conveyance_type": "FLIGHT" if port.kind == "AIR" else "VESSEL",
            "conveyance_id": f"MU{rnd.randrange(100, 999)}/2017-06-01", "scheduled_port": None,
            "lane": rnd.choice(["MANUAL", "E_GATE", "TRANSIT_144H"]), "entry_basis": rnd.choice(["VISA", "VISA_FREE"]),
            "decision": "CLEARED", "origin_country": rnd.choice([None, "JPN"]), "destination_country": None,
        })
    return out


CHUNK = 500


def _interleaved(pairs: dict, n: int) -> dict[str, float]:
    """One run: records/s of each path over the same ``n`` items, the paths alternating every CHUNK items.

    Time is the process's CPU time (``time.process_time``): on a machine shared with other work, time spent
    descheduled is not the codec's; alternating in small chunks lets both paths see the same cache and load.
    """
    spent = {name: 0.0 for name in pairs}
    clock = time.process_time
    for start in range(0, n, CHUNK):
        for name, (fn, items) in pairs.items():
            chunk = items[start:start + CHUNK]
            t0 = clock()
            for item in chunk:
                fn(item)
            spent[name] += clock() - t0
    return {name: n / s for name, s in spent.items()}


def measure(records: list[dict], runs: int = RUNS) -> dict[str, float]:
    codec = Codec()
    schema = contract.current_parsed("clearance")
    BytesIO = io.BytesIO

    def bare_write(rec):
        buf = BytesIO()
        schemaless_writer(buf, schema, rec)
        return buf.getvalue()

    def codec_write(rec):
        return codec.encode("clearance", rec)

    framed = [codec_write(r) for r in records]
    bodies = [f[5:] for f in framed]

    def bare_read(body):
        return schemaless_reader(BytesIO(body), schema)

    decode = codec.decode
    projected = codec.projected_decoder("clearance", PROJECTED)
    for f in framed[:50]:  # same answers before timing anything
        assert decode(f)[1]["subject"] == projected(f)["subject"]

    pairs = {"bare_encode": (bare_write, records), "codec_encode": (codec_write, records),
             "bare_decode": (bare_read, bodies), "codec_decode": (decode, framed),
             "projected_decode": (projected, framed)}
    rates: dict[str, list[float]] = {k: [] for k in pairs}
    _interleaved(pairs, 2000)  # warm-up
    for _ in range(runs):
        for name, rate in _interleaved(pairs, len(records)).items():
            rates[name].append(rate)
    out = {k: bench.median(v) for k, v in rates.items()}
    out["body_bytes"] = sum(len(b) for b in bodies) / len(bodies)
    return out


def main() -> None:
    records = clearances(RECORDS)
    m = measure(records)
    enc = m["codec_encode"] / m["bare_encode"]  # ratios shown to 0.1 %: the goal sits at 90 %
    dec = m["codec_decode"] / m["bare_decode"]
    proj = m["projected_decode"] / m["bare_decode"]
    goal = "met" if enc >= 0.9 and dec >= 0.9 else "NOT met"
    text = f"""## Codec: ClearanceEvent encode and decode per core

Command: `{bench.command()}` (module `bench/codec.py`). Machine: {bench.machine()}.
{RECORDS:,} distinct ClearanceEvent records (20 fields, {m['body_bytes']:.0f} bytes of Avro body on average),
one thread; each rate is the median of {RUNS} runs; within a run the paths alternate every {CHUNK} records and\nthe time counted is the process's CPU time (the machine is shared with other work).

| path | records/s (median of {RUNS}) | vs bare fastavro |
|---|---:|---:|
| bare fastavro `schemaless_writer` (BytesIO + getvalue) | {m['bare_encode']:,.0f} | 100 % |
| `Codec.encode` (validation + Confluent framing + Avro) | {m['codec_encode']:,.0f} | {enc:.1%} |
| bare fastavro `schemaless_reader` (current schema) | {m['bare_decode']:,.0f} | 100 % |
| `Codec.decode` (framing + id look-up + Avro + leftover check) | {m['codec_decode']:,.0f} | {dec:.1%} |
| `Codec.projected_decoder` ({len(PROJECTED)} fields: {', '.join(PROJECTED)}) | {m['projected_decode']:,.0f} | {proj:.1%} |

Goal (codec at least 90 % of bare fastavro each way): **{goal}**.
Why the codec decode can beat the bare reader: the codec's reader schema drops `logicalType: uuid`, so
`event_id` comes back as the string it is on the wire instead of a `uuid.UUID` built for every record.
Encode validation runs the semantic checks on every record (canonical UUID, countries, station and port of
the region, token form, event time); the schema's own checks are fastavro's, re-run only to name the field
of a refused record.
"""
    path = bench.write_section("codec", text)
    print(text)
    print(f"(written to {path})")


if __name__ == "__main__":
    main()
