"""`yrdbus report`: the dashboards' main panels as PNG files, for people without Grafana.

The SQL is the dashboards' own (``dashboards/json/*.json``): each panel's ``rawSql`` with the
macros of Grafana's ClickHouse data source expanded the way the plugin expands them
(``expand_macros``, after ``pkg/macros/macros.go`` of grafana/clickhouse-datasource), run on the
store, drawn with matplotlib. What a report shows is what the wall screens show for the same period.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards" / "json"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"

#: The panels a report renders: (dashboard uid, panel title).
MAIN_PANELS = [
    ("yrdbus-risk", "Cross-region alerts by region pair"),
    ("yrdbus-risk", "Derived alerts by kind"),
    ("yrdbus-risk", "Rising patterns"),
    ("yrdbus-flow", "Crossings against the baseline"),
    ("yrdbus-flow", "Ports: crossings against their baseline"),
    ("yrdbus-flow", "Surges and support requests"),
    ("yrdbus-cases", "Case events by stage"),
    ("yrdbus-cases", "Cases opened by type"),
    ("yrdbus-cases", "Nationalities of opened cases"),
    ("yrdbus-transit", "144-hour transit stays by status"),
    ("yrdbus-transit", "Overstayed transit stays"),
]


class ReportError(RuntimeError):
    pass


# =========================================================================== macros
def _dt(t: datetime) -> str:
    return f"toDateTime({int(t.timestamp())})"


def _dt64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(round(t.timestamp() * 1000))})"


def _date(t: datetime) -> str:
    return f"toDate('{t.astimezone(timezone.utc).strftime('%Y-%m-%d')}')"


def _args(name: str, args: list[str], n: int) -> list[str]:
    if len(args) != n:
        raise ReportError(f"$__{name}: expected {n} argument(s), received {len(args)}")
    return args


#: the dashboards' template variables and what "All" stands for
VARIABLES = {"region": ("SH", "JS", "ZJ", "AH")}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}|\[\[([A-Za-z_][A-Za-z0-9_]*)\]\]"
                       r"|\$(?!__)([A-Za-z_][A-Za-z0-9_]*)")


def interpolate_variables(sql: str, values: dict[str, list[str] | tuple[str, ...]] | None = None) -> str:
    """``sql`` with the dashboards' template variables replaced as Grafana replaces them before the data source
    sees the query: ``${region:singlequote}`` -> ``'SH','JS'`` (quotes in values escaped), ``${region:csv}`` and
    ``${region}``/``$region`` -> ``SH,JS``. A variable without a value gets all its values (Grafana's "All");
    an unknown variable or format is an error, not a query with a hole in it."""
    chosen = {name: tuple(values.get(name) or every) if values else every for name, every in VARIABLES.items()}

    def replace(m: re.Match) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        fmt = m.group(2) or "csv"
        if name not in chosen:
            raise ReportError(f"${name}: not a variable of the dashboards (they have {', '.join(sorted(VARIABLES))})")
        items = chosen[name]
        if fmt == "singlequote":
            return ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in items)
        if fmt == "csv":
            return ",".join(items)
        raise ReportError(f"${{{name}:{fmt}}}: the format {fmt!r} is not one the dashboards use (singlequote, csv)")

    return _VARIABLE.sub(replace, sql)


def expand_macros(sql: str, start: datetime, end: datetime, interval_s: float,
                  variables: dict[str, list[str]] | None = None) -> str:
    """``sql`` with the template variables (``interpolate_variables``: ``variables``, else every value) and the
    ClickHouse data source's macros expanded for the period [start, end] and interval.

    The expansions are the plugin's (grafana/clickhouse-datasource, pkg/macros/macros.go):
    ``$__timeFilter(c)`` -> ``c >= toDateTime(<from>) AND c <= toDateTime(<to>)`` (Unix seconds),
    ``$__timeFilter_ms(c)`` with ``fromUnixTimestamp64Milli(<ms>)``, ``$__dateFilter(c)`` with
    ``toDate('YYYY-MM-DD')``, ``$__dateTimeFilter(d, t)`` / ``$__dt``, ``$__fromTime``/``$__toTime``
    (and ``_ms``), ``$__timeFrom(c)``/``$__timeTo(c)``, ``$__timeInterval(c)`` ->
    ``toStartOfInterval(toDateTime(c), INTERVAL <s> second)``, ``$__timeInterval_ms(c)``, ``$__interval_s``
    (whole seconds, at least 1). Arguments are split on commas and trimmed; a name is matched whole
    (``$__timeFilter`` never eats ``$__timeFilter_ms``); an unknown ``$__`` name is left as it is.
    """
    seconds = int(max(interval_s, 1))
    ms = int(max(interval_s * 1000, 1))

    def time_filter(a):
        c, = _args("timeFilter", a, 1)
        return f"{c} >= {_dt(start)} AND {c} <= {_dt(end)}"

    def time_filter_ms(a):
        c, = _args("timeFilter_ms", a, 1)
        return f"{c} >= {_dt64(start)} AND {c} <= {_dt64(end)}"

    def date_filter(a):
        c, = _args("dateFilter", a, 1)
        return f"{c} >= {_date(start)} AND {c} <= {_date(end)}"

    def date_time_filter(a):
        d, t = _args("dateTimeFilter", a, 2)
        return (f"({d} >= {_date(start)} AND {d} <= {_date(end)}) AND "
                f"({t} >= {_dt(start)} AND {t} <= {_dt(end)})")

    macros = {
        "timeFilter": time_filter,
        "timeFilter_ms": time_filter_ms,
        "dateFilter": date_filter,
        "dateTimeFilter": date_time_filter,
        "dt": date_time_filter,
        "fromTime": lambda a: _dt(start),
        "toTime": lambda a: _dt(end),
        "fromTime_ms": lambda a: _dt64(start),
        "toTime_ms": lambda a: _dt64(end),
        "timeFrom": lambda a: f"{_args('timeFrom', a, 1)[0]} >= {_dt(start)}",
        "timeTo": lambda a: f"{_args('timeTo', a, 1)[0]} <= {_dt(end)}",
        "timeInterval": lambda a: f"toStartOfInterval(toDateTime({_args('timeInterval', a, 1)[0]}), "
                                  f"INTERVAL {seconds} second)",
        "timeInterval_ms": lambda a: f"toStartOfInterval(toDateTime64({_args('timeInterval_ms', a, 1)[0]}, 3), "
                                     f"INTERVAL {ms} millisecond)",
        "interval_s": lambda a: str(seconds),
    }
    pattern = re.compile(r"\$__(" + "|".join(sorted(map(re.escape, macros), key=len, reverse=True))
                         + r")(?![A-Za-z0-9_])(?:\(([^()]*)\))?")

    def replace(m: re.Match) -> str:
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2) is not None else []
        return macros[m.group(1)](args)

    return pattern.sub(replace, interpolate_variables(sql, variables))


def grafana_interval(start: datetime, end: datetime, width_px: int = 1000, min_interval_s: float = 1.0) -> float:
    """About the query interval Grafana gives a panel: the period over its width in pixels, rounded to a
    step of the kind Grafana's roundInterval uses (its exact value only sizes the time buckets)."""
    raw = max((end - start).total_seconds() / max(width_px, 1), min_interval_s)
    # (upper bound, step) in seconds, coarser for longer periods
    steps = [(0.015, 0.01), (0.035, 0.02), (0.075, 0.05), (0.15, 0.1), (0.35, 0.2), (0.75, 0.5), (1.5, 1),
             (3.5, 2), (7.5, 5), (12.5, 10), (17.5, 15), (25, 20), (45, 30), (90, 60), (150, 120), (270, 300),
             (450, 300), (750, 600), (1050, 900), (1500, 1200), (2700, 1800), (5400, 3600), (9000, 7200),
             (16200, 10800), (32400, 21600), (86400, 43200), (604800, 86400), (1814400, 604800),
             (3628800, 2592000)]
    for limit, step in steps:
        if raw < limit:
            return max(step, min_interval_s)
    return 31536000.0


# =========================================================================== dashboards
def dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, dict]:
    """Every dashboard under ``directory``: uid -> its JSON model (with the file name under ``_file``)."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        model = json.loads(path.read_text())
        model["_file"] = path.name
        out[model["uid"]] = model
    return out


def panels(model: dict):
    """Every panel of a dashboard, those inside rows included."""
    for p in model.get("panels", []):
        yield p
        yield from p.get("panels", [])


def clickhouse_targets(panel: dict) -> list[dict]:
    return [t for t in panel.get("targets", [])
            if (t.get("datasource") or panel.get("datasource") or {}).get("type") == CLICKHOUSE_TYPE]


def main_panels(only: list[str] | None = None, directory: Path = DASHBOARDS_DIR) -> list[dict]:
    boards = dashboards(directory)
    out = []
    for uid, title in MAIN_PANELS:
        board = boards.get(uid)
        if board is None:
            raise ReportError(f"dashboard {uid} is not in {directory}")
        panel = next((p for p in panels(board) if p.get("title") == title), None)
        if panel is None or not clickhouse_targets(panel):
            raise ReportError(f"dashboard {uid} has no ClickHouse panel titled {title!r}")
        if only and not any(o.lower() in title.lower() for o in only):
            continue
        out.append({"dashboard": uid, "dashboard_title": board["title"], **panel})
    return out


# =========================================================================== running and drawing
def default_period(client, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """[start, end]: as given; else the day up to the newest crossing in the store (or up to now)."""
    if end is None:
        newest = client.query("SELECT max(occurred_at) FROM clearances").result_rows[0][0]
        if newest is None or newest.year < 1971:
            end = datetime.now(timezone.utc)
        else:
            newest = newest if newest.tzinfo else newest.replace(tzinfo=timezone.utc)
            end = newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if start is None:
        start = end - timedelta(days=1)
    if start >= end:
        raise ReportError(f"--from {start.isoformat()} is not before --to {end.isoformat()}")
    return start, end


def run_panel(client, panel: dict, start: datetime, end: datetime, width: int = 1000, variables=None):
    """(column names, rows) of the panel's first ClickHouse query for the period (and template variables)."""
    target = clickhouse_targets(panel)[0]
    sql = expand_macros(target["rawSql"], start, end, grafana_interval(start, end, width), variables)
    try:
        result = client.query(sql)
    except Exception as exc:
        raise ReportError(f"panel {panel.get('title')!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    return list(result.column_names), [list(r) for r in result.result_rows]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _label(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    return "" if v is None else str(v)


def draw(names: list[str], rows: list[list], panel: dict, path: Path, width: int = 1000) -> None:
    """Draw a panel's rows as Grafana would show them: lines over time, bars, or a table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = panel.get("type")
    title = panel.get("title", "")
    fig_w = width / 100
    if kind in ("table",) or not rows:
        shown = rows[:20]
        fig, ax = plt.subplots(figsize=(fig_w, 0.9 + 0.32 * (len(shown) + 1)))
        ax.axis("off")
        if shown:
            cells = [[_label(v)[:40] for v in r] for r in shown]
            table = ax.table(cellText=cells, colLabels=names, loc="upper center", cellLoc="left")
            table.auto_set_font_size(False)
            table.set_fontsize(8)
            table.scale(1, 1.25)
        else:
            ax.text(0.5, 0.5, "no data in this period", ha="center", va="center", fontsize=12, color="grey")
        more = f" (first 20 of {len(rows)})" if len(rows) > 20 else ""
        ax.set_title(title + more, loc="left", fontsize=11)
    elif kind == "timeseries":
        fig, ax = plt.subplots(figsize=(fig_w, 4.2))
        t_idx = next((i for i, r in enumerate(rows[0]) if isinstance(r, datetime) or hasattr(r, "year")), 0)
        label_idx = [i for i, v in enumerate(rows[0]) if i != t_idx and not _num(v)]
        value_idx = [i for i, v in enumerate(rows[0]) if i != t_idx and _num(v)]
        series: dict[str, tuple[list, list]] = {}
        for r in rows:
            labels = " ".join(_label(r[i]) for i in label_idx)
            for i in value_idx:
                key = (labels + " " + names[i]).strip() if len(value_idx) > 1 or not labels else labels
                xs, ys = series.setdefault(key, ([], []))
                xs.append(r[t_idx])
                ys.append(_as_float(r[i]))
        for key, (xs, ys) in sorted(series.items())[:12]:
            ax.plot(xs, ys, label=key, linewidth=1.4, drawstyle="steps-post" if len(xs) < 40 else "default")
        ax.grid(alpha=0.3)
        ax.set_title(title, loc="left", fontsize=11)
        if len(series) > 1:
            ax.legend(fontsize=8, ncol=min(4, len(series)), loc="upper left")
        fig.autofmt_xdate()
    else:   # barchart, piechart, stat, bargauge: categories against their numbers
        label_idx = [i for i, v in enumerate(rows[0]) if not _num(v)]
        value_idx = [i for i, v in enumerate(rows[0]) if _num(v)][:3]
        cats = [" ".join(_label(r[i]) for i in label_idx) or names[value_idx[0]] for r in rows][:25]
        fig, ax = plt.subplots(figsize=(fig_w, 1.2 + 0.34 * len(cats) * max(1, len(value_idx)) ** 0.5))
        height = 0.8 / max(1, len(value_idx))
        for k, i in enumerate(value_idx):
            vals = [_as_float(r[i]) for r in rows][:25]
            pos = [j + k * height for j in range(len(cats))]
            bars = ax.barh(pos, vals, height=height, label=names[i])
            ax.bar_label(bars, labels=[f"{v:,.1f}".rstrip("0").rstrip(".") for v in vals], fontsize=7, padding=2)
        ax.set_yticks([j + height * (len(value_idx) - 1) / 2 for j in range(len(cats))], cats, fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title, loc="left", fontsize=11)
        if len(value_idx) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_panel(client, panel: dict, start: datetime, end: datetime, out: Path, width: int = 1000,
                 variables=None) -> dict:
    names, rows = run_panel(client, panel, start, end, width, variables)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_slug(panel['dashboard'].removeprefix('yrdbus-'))}-{_slug(panel['title'])}.png"
    draw(names, rows, panel, path, width)
    return {"dashboard": panel["dashboard"], "title": panel["title"], "file": str(path), "rows": len(rows),
            "columns": names}


def write_index(out: Path, written: list[dict], start: datetime, end: datetime, source: str) -> dict:
    summary = {"from": start.isoformat(), "to": end.isoformat(), "source": source, "panels": written}
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    html = ["<!doctype html><meta charset='utf-8'><title>yrdbus report</title>",
            f"<h1>yrdbus report</h1><p>{start.isoformat()} to {end.isoformat()}, from {source}</p>"]
    for w in written:
        html.append(f"<h2>{w['title']}</h2><img src='{Path(w['file']).name}' alt='{w['title']}'>")
    (out / "index.html").write_text("\n".join(html) + "\n")
    return summary
