"""The client's own ceiling: a bare confluent-kafka consume-and-decode loop over the benchmark's input.

No framework, no state, no output: one ``Consumer`` subscribed to the source topics, ``consume()`` in
batches of 10,000, and each value's Avro body read with fastavro's ``schemaless_reader`` on the writer
schema named by its Confluent header (the current schemas, parsed once). It is what any Python consumer of
these topics pays at least, so the stream worker's throughput is reported as a ratio to it.

Measured by ``bench.e2e`` side by side with the stream worker and the Quix Streams peer, on the same broker
and the same bytes (``python -m bench e2e``). ``python -m bench ceiling`` alone only says so; the loop runs
as ``python -m bench.ceiling --bootstrap B --prefix P --expect N`` and prints its figures as JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import time
import uuid


def decoders() -> dict[int, object]:
    """Schema id -> parsed writer schema, for every kind with a current schema."""
    from fastavro import parse_schema

    from schemas import contract
    from schemas.codec import get_codec

    codec = get_codec()
    out = {}
    for kind in contract.KINDS:
        try:
            sid = codec.schema_id(kind)
        except Exception:
            continue
        out[sid] = parse_schema(json.loads(contract.current_schema_json(kind)))
    return out


def framed_reader():
    """A function reading one Confluent-framed value's Avro body with fastavro, on the writer schema its header
    names (the schemas parsed once): what any Python consumer of these topics does with a record at least."""
    from fastavro import schemaless_reader

    schemas = decoders()
    header = struct.Struct(">bI")

    def read(value: bytes):
        _, sid = header.unpack_from(value)
        buf = io.BytesIO(value)
        buf.seek(5)
        return schemaless_reader(buf, schemas[sid], None)

    return read


def reader_args(doc: str) -> argparse.Namespace:
    """The command line of a reader run by bench.e2e (this ceiling, Faust's floor)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topics", required=True, help="comma-separated topic names")
    ap.add_argument("--expect", type=int, required=True, help="stop after this many records")
    ap.add_argument("--timeout", type=float, default=300.0)
    return ap.parse_args()


def run(bootstrap: str, topic_names: list[str], expect: int, timeout: float = 300.0) -> dict:
    from confluent_kafka import Consumer

    read = framed_reader()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": True,
                  "fetch.max.bytes": 64 * 1024 * 1024, "queued.min.messages": 200_000})
    c.subscribe(topic_names)
    n = errors = 0
    first = last = None
    deadline = time.monotonic() + timeout
    cpu0 = time.process_time()
    try:
        while n < expect and time.monotonic() < deadline:
            for m in c.consume(num_messages=10_000, timeout=0.5):
                if m.error():
                    errors += 1
                    continue
                if first is None:
                    first = time.perf_counter()
                read(m.value())
                n += 1
            last = time.perf_counter()
    finally:
        cpu = time.process_time() - cpu0
        c.close()
    wall = (last - first) if first is not None and last is not None else float("nan")
    return {"records": n, "expected": expect, "seconds": wall, "rate": n / wall if wall else 0.0,
            "cpu_seconds": cpu, "errors": errors}


def main() -> None:
    print("the bare-client ceiling is measured by bench.e2e, side by side with the stream worker and the "
          "peer on the same broker and input: python -m bench e2e")


if __name__ == "__main__":
    a = reader_args(__doc__)
    print(json.dumps(run(a.bootstrap, a.topics.split(","), a.expect, a.timeout)))
