"""Who may read what in ClickHouse: analyst roles, read-only grants, limits, and rows by region.

On a ClickHouse server (one node or a cluster) ``render()`` gives the DDL, applied once by an
administrator (``yrdbus security clickhouse | clickhouse-client --multiquery``):

- role ``analyst``: the risk analysis centre, every region's rows; ``SELECT`` on the bus's database only
  (no INSERT, ALTER, DROP, no table functions that read outside the server);
- roles ``analyst_sh``, ``analyst_js``, ``analyst_zj``, ``analyst_ah``: the same grant, and row policies
  that show them their own region's rows only (clearances, alerts and cases of the region, derived alerts
  it must act on or is informed of, its trends, risk scores and dead letters);
- a settings profile for every analyst role: read-only (``readonly = 2``: settings may change, data may
  not), a time limit and a result size limit the analyst cannot raise (``CONST``);
- a permissive ``USING 1`` policy for every other user (the sink, Grafana's service user, administrators),
  since ClickHouse shows no row of a table that has row policies to a user none of them names.

``table_filters()`` gives the same region conditions for the embedded store's live endpoint, which
applies them per user with ``additional_table_filters`` (chDB runs without users or policies).
"""
from __future__ import annotations

from schemas.reference import REGIONS

#: the region condition of each table that holds regional rows ({r}: the region code)
REGION_CONDITIONS = {
    "clearances": "region = '{r}'",
    "alerts": "region = '{r}'",
    "cases": "region = '{r}'",
    "derived_alerts": "has(must_act, '{r}') OR has(inform, '{r}')",
    "trends": "region = '{r}'",
    "risk_scores": "region = '{r}'",
    "flow_hourly": "region = '{r}'",
    "cases_daily": "region = '{r}'",
    # a derived alert's row names the regions that must act, comma-separated
    "subject_events": "has(splitByChar(',', region), '{r}')",
    "dead_letters": "startsWith(source_topic, 'border.{r}.') OR position(source_topic, '.border.{r}.') > 0",
}


def role(region: str | None) -> str:
    return "analyst" if region is None else f"analyst_{region.lower()}"


def condition(table: str, regions) -> str:
    """The condition that shows the rows of ``regions`` (one or several) of ``table``."""
    parts = [REGION_CONDITIONS[table].format(r=r) for r in regions]
    return parts[0] if len(parts) == 1 else " OR ".join(f"({p})" for p in parts)


def table_filters(database: str, regions) -> dict[str, str]:
    """``additional_table_filters`` for a user who may read ``regions`` only (qualified table names)."""
    return {f"{database}.{t}": condition(t, regions) for t in REGION_CONDITIONS}


def render(database: str = "yrdbus", *, cluster: str | None = None, regions=REGIONS,
           max_execution_time: float = 30.0, max_result_rows: int = 1_000_000) -> list[str]:
    """The DDL statements (without the trailing ``;``) of the analyst roles, grants, limits and row policies.

    Every statement is ``IF NOT EXISTS`` or a grant, so running them twice changes nothing. On a cluster,
    the policies are also set on the ``<table>_local`` tables the distributed ones read, and the
    cluster's ``<secret>`` must be set so that the shards see the analyst as the initial user.
    """
    on = f" ON CLUSTER {_ident(cluster)}" if cluster else ""
    db = _ident(database)
    roles = [role(None)] + [role(r) for r in regions]
    out = []
    for name in roles:
        out.append(f"CREATE ROLE IF NOT EXISTS {name}{on}")
        out.append(f"GRANT{on} SELECT ON {db}.* TO {name}")
    out.append(f"CREATE SETTINGS PROFILE IF NOT EXISTS yrdbus_analyst{on} SETTINGS readonly = 2 CONST, "
               f"max_execution_time = {float(max_execution_time):g} CONST, max_result_rows = {int(max_result_rows)} "
               f"CONST, result_overflow_mode = 'throw' CONST TO {', '.join(roles)}")
    regional = [role(r) for r in regions]
    tables = list(REGION_CONDITIONS)
    if cluster:
        tables += [f"{t}_local" for t in REGION_CONDITIONS]
    for table in tables:
        base = table.removesuffix("_local")
        for r in regions:
            out.append(f"CREATE ROW POLICY IF NOT EXISTS {role(r)}_rows ON {db}.{table}{on} FOR SELECT "
                       f"USING {condition(base, [r])} AS PERMISSIVE TO {role(r)}")
        out.append(f"CREATE ROW POLICY IF NOT EXISTS all_rows ON {db}.{table}{on} FOR SELECT USING 1 "
                   f"AS PERMISSIVE TO ALL EXCEPT {', '.join(regional)}")
    return out


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"{name!r}: a database or cluster name is letters, digits and '_'")
    return name
