"""The peer: the cross-region hit correlation written on Quix Streams, over the same broker and input.

What it does, the way a Quix Streams user would write it: the eight clearance and alert topics of the
four regions as one ``StreamingDataFrame`` (``concat``), values read from their Confluent-framed Avro with
fastavro (a ``Deserializer`` of its own, logical types off as in the stream worker's fast path), events
without a subject dropped, ``group_by("subject")`` (Quix's repartition topic, JSON), then a stateful
``apply`` (RocksDB state with its changelog topic): a RAISED watch-list, forged-document or impostor
alert is kept in the subject's state; a clearance of a subject with such a flag, in another region,
within 30 days, once per flag and region, is a hit, sent as JSON to the output topic.

It does less than the stream worker, which runs every detector (cross-region hit, port shopping,
144-hour transit, fraud spread, trends, flow surge, conveyance following, risk scores) and writes Avro:
the peer only has to read a clearance's flags, and writes state only for the few flagged subjects.

Quix Streams pins ``confluent-kafka<2.13`` and the bus pins 2.16, so the peer lives in a virtual
environment of its own, ``.venv-peer`` (``bench/peer-requirements.txt``, made by ``make bench``); it runs
as ``.venv-peer/bin/python bench/peer_quix.py ...`` and prints its figures as JSON. ``bench.e2e`` starts it
side by side with the stream worker and the bare-client ceiling; ``python -m bench peer_quix`` alone only
says so.
"""
from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-peer"
REQUIREMENTS = Path(__file__).resolve().parent / "peer-requirements.txt"
FLAG_KINDS = ("WATCHLIST_HIT", "FORGED_DOCUMENT", "IMPOSTOR")
ACTIVE_MS = 30 * 24 * 3_600_000


def peer_python() -> Path | None:
    py = PEER_VENV / "bin" / "python"
    return py if py.exists() else None


def main() -> None:
    print("the Quix Streams peer is measured by bench.e2e, side by side with the stream worker and the "
          "bare-client ceiling on the same broker and input: python -m bench e2e")


# --------------------------------------------------------------------------- the peer process
def _run(a) -> dict:
    from fastavro import parse_schema, schemaless_reader
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer

    schemas = {int(k): parse_schema(v) for k, v in json.loads(Path(a.schemas).read_text()).items()}
    header = struct.Struct(">bI")

    class ConfluentAvro(Deserializer):
        def __call__(self, value: bytes, ctx):
            _, sid = header.unpack_from(value)
            buf = io.BytesIO(value)
            buf.seek(5)
            return schemaless_reader(buf, schemas[sid], None)

    app = Application(broker_address=a.bootstrap, consumer_group=a.group, auto_offset_reset="earliest",
                      state_dir=a.state_dir, commit_interval=a.commit_interval)
    regions = ("SH", "JS", "ZJ", "AH")
    frames = [app.dataframe(app.topic(f"{a.prefix}border.{r}.{k}", value_deserializer=ConfluentAvro()))
              for r in regions for k in ("clearance", "alert")]
    sdf = frames[0]
    for f in frames[1:]:
        sdf = sdf.concat(f)
    out = app.topic(f"{a.prefix}peer.hits", value_serializer="json")
    seen = {"n": 0, "hits": 0, "first": None, "last": None}

    sdf = sdf.filter(lambda v: bool(v.get("subject")))
    sdf = sdf.group_by("subject")

    def correlate(v: dict, state) -> list:
        now = time.perf_counter()
        if seen["first"] is None:
            seen["first"] = now
        seen["n"] += 1
        seen["last"] = now
        hits = []
        if "direction" in v:          # a clearance
            flags = state.get("flags")
            if flags:
                done = state.get("done", [])
                for f in flags:
                    key = f"{f['id']}|{v['region']}"
                    if f["region"] != v["region"] and 0 <= v["occurred_at"] - f["at"] <= ACTIVE_MS \
                            and key not in done:
                        done.append(key)
                        hits.append({"kind": "CROSS_REGION_HIT", "subject": v["subject"], "flag": f["id"],
                                     "flag_region": f["region"], "region": v["region"],
                                     "evidence": [f["id"], v["event_id"]], "occurred_at": v["occurred_at"]})
                if hits:
                    state.set("done", done)
        elif v.get("kind") in FLAG_KINDS and v.get("status") == "RAISED":
            flags = state.get("flags", [])
            if not any(f["id"] == v["event_id"] for f in flags):
                flags.append({"id": v["event_id"], "region": v["region"], "at": v["occurred_at"]})
                state.set("flags", flags)
        seen["hits"] += len(hits)
        if seen["n"] >= a.expect:
            app.stop()
        return hits

    sdf = sdf.apply(correlate, stateful=True, expand=True)
    sdf.to_topic(out)
    cpu0 = time.process_time()
    app.run()
    wall = (seen["last"] - seen["first"]) if seen["first"] is not None else float("nan")
    return {"records": seen["n"], "expected": a.expect, "hits": seen["hits"], "seconds": wall,
            "rate": seen["n"] / wall if wall else 0.0, "cpu_seconds": time.process_time() - cpu0}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--group", required=True)
    ap.add_argument("--schemas", required=True, help="JSON file: schema id -> writer schema (logical types off)")
    ap.add_argument("--expect", type=int, required=True, help="records with a subject to process, then stop")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--commit-interval", type=float, default=2.8)
    args = ap.parse_args()
    result = _run(args)
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0)
