"""Reference data (``schemas/reference/*.json``) into ClickHouse tables, behind the dictionaries."""
from __future__ import annotations

import json

from schemas import reference

#: table -> (columns, rows from the reference JSON)
def _tables() -> dict[str, tuple[list[str], list[list]]]:
    regions = reference.regions().values()
    ports = reference.ports().values()
    stations = reference.stations().values()
    countries = reference.countries().values()
    out = {
        "ref_regions": (["code", "name", "name_zh", "agency", "neighbours", "share_of_crossings", "transit_144h"],
                        [[r["code"], r["name"], r.get("name_zh", ""), r.get("agency", ""), list(r.get("neighbours", [])),
                          float(r.get("share_of_crossings", 0.0)), bool(r.get("transit_144h", False))] for r in regions]),
        "ref_stations": (["station_id", "region", "name", "ports"],
                         [[s["station_id"], s["region"], s.get("name", ""), list(s.get("ports", []))] for s in stations]),
        "ref_ports": (["code", "code_system", "name", "name_zh", "region", "kind", "station_id", "share_of_region",
                       "transit_144h"],
                      [[p.code, p.code_system, p.name, p.name_zh, p.region, p.kind, p.station_id,
                        float(p.share_of_region), bool(p.transit_144h)] for p in ports]),
        "ref_countries": (["alpha3", "alpha2", "name"],
                          [[c["alpha3"], c.get("alpha2", ""), c.get("name", "")] for c in countries]),
    }
    profile = reference.DIR / "flow_profile.json"
    if profile.is_file():
        p = json.loads(profile.read_text())
        per_hour = float(p["annual_crossings"]) / 8760
        out["ref_flow_baseline"] = (["kind", "hour", "weekday", "crossings_per_hour"], [
            [kind, h, d, per_hour * float(curve[h]) * float(p["day_of_week"][d])]
            for kind, curve in p["hour_of_day"].items() for h in range(24) for d in range(7)])
    return out


DICTIONARIES = ("regions", "stations", "ports")


def load_reference(client, database: str, *, cluster: str | None = None) -> dict[str, int]:
    """Replace the reference tables' rows with the JSON's and reload the dictionaries; rows per table."""
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    counts = {}
    for table, (columns, rows) in _tables().items():
        client.command(f"TRUNCATE TABLE IF EXISTS {database}.{table}{on_cluster}")
        if rows:
            client.insert(f"{database}.{table}", rows, column_names=columns)
        counts[table] = len(rows)
    for name in DICTIONARIES:
        client.command(f"SYSTEM RELOAD DICTIONARY {database}.{name}")
    return counts
