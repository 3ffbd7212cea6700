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
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from yrdbus.words import BEIJING, Words

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


# =========================================================================== the period
#: the tables and event-time columns the main panels filter on: a default period spans what they hold
EVENT_TIME_COLUMNS = [("clearances", "occurred_at"), ("derived_alerts", "occurred_at"), ("cases", "occurred_at"),
                      ("trends", "window_end")]
#: the longest default period: of a store holding more, the last 31 days up to its newest event
DEFAULT_SPAN_MAX = timedelta(days=31)


class Period(NamedTuple):
    start: datetime
    end: datetime
    reason: str          # how it was chosen, for the summary and report.json


def _utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def stored_span(client) -> tuple[datetime, datetime] | None:
    """(earliest, newest) event time in the tables the main panels read (``EVENT_TIME_COLUMNS``), None when
    they are all empty."""
    times = []
    for table, column in EVENT_TIME_COLUMNS:
        times += [_utc(t) for t in client.query(f"SELECT minOrNull({column}), maxOrNull({column}) FROM {table}")
                  .result_rows[0] if t is not None]
    return (min(times), max(times)) if times else None


def default_period(client, start: datetime | None, end: datetime | None) -> Period:
    """The report's period: as given; else the span of the events the main panels read, so that no panel is
    empty for want of looking at the right days (a day up to the newest crossing left out alerts raised earlier
    in a simulated run). Neither given: the hour of the earliest event to the hour after the newest, at most
    the last 31 days of it. Only the end: the day before it. Only the start: up to the hour after the newest
    event. Nothing stored: the day up to now."""
    if start is not None and end is not None:
        reason = "as given"
    elif end is not None:
        start, reason = end - timedelta(days=1), "the day before --to"
    elif (span := stored_span(client)) is None:
        end = datetime.now(timezone.utc)
        start, reason = (start, "no events stored: up to now") if start is not None else (
            end - timedelta(days=1), "no events stored: the day up to now")
    else:
        first, newest = span
        end = _hour(newest) + timedelta(hours=1)
        stored = f"{first:%Y-%m-%d %H:%M} to {newest:%Y-%m-%d %H:%M}"
        if start is not None:
            reason = f"from --from to the newest event stored, {newest:%Y-%m-%d %H:%M}"
        elif end - _hour(first) > DEFAULT_SPAN_MAX:
            start = end - DEFAULT_SPAN_MAX
            reason = f"the last {DEFAULT_SPAN_MAX.days} days of the events stored, {stored}"
        else:
            start, reason = _hour(first), f"every event stored, {stored}"
    if start >= end:
        raise ReportError(f"--from {start.isoformat()} is not before --to {end.isoformat()}")
    return Period(start, end, reason)


# =========================================================================== running
def run_panel(client, panel: dict, start: datetime, end: datetime, width: int = 1000, variables=None):
    """(column names, rows) of the panel's first ClickHouse query for the period (and template variables)."""
    target = clickhouse_targets(panel)[0]
    sql = expand_macros(target["rawSql"], start, end, grafana_interval(start, end, width), variables)
    try:
        result = client.query(sql)
    except Exception as exc:
        raise ReportError(f"panel {panel.get('title')!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    return list(result.column_names), [list(r) for r in result.result_rows]


#: the columns carrying the flow baseline (ref_flow_baseline: the region's full 2017 volume), each with the
#: observed column it is the baseline of
BASELINE_COLUMNS = {"baseline": "crossings", "expected_in_period": "crossings_in_period"}


def scale_baseline(names: list[str], rows: list[list], scale: float) -> list[list]:
    """``rows`` with the baseline columns (``BASELINE_COLUMNS``) multiplied by ``scale`` and a ``ratio`` column
    recomputed from them (observed over scaled baseline, rounded to 2 places as the panel's SQL rounds it; None
    where the baseline is 0). The baseline is full volume while a simulated run publishes a fraction of it
    (`yrdbus run --scale`, 0.1 by default): unscaled, every port of such a run reads as a tenth of normal."""
    scaled = [i for i, n in enumerate(names) if n in BASELINE_COLUMNS]
    if scale == 1 or not scaled:
        return rows
    # (ratio, observed, baseline) columns of a panel with a ratio of an observed column to its baseline
    ratio = next(((names.index("ratio"), names.index(BASELINE_COLUMNS[names[i]]), i) for i in scaled
                  if "ratio" in names and BASELINE_COLUMNS[names[i]] in names), None)
    out = []
    for r in rows:
        r = list(r)
        for i in scaled:
            r[i] = None if r[i] is None else round(float(r[i]) * scale, 1)
        if ratio is not None:
            at, observed, baseline = ratio
            r[at] = round(r[observed] / r[baseline], 2) if r[baseline] and r[observed] is not None else None
        out.append(r)
    return out


# =========================================================================== drawing
#: a time series with fewer points than this is drawn as bars at its times: a line through a handful of
#: counts pretends a continuity the data does not have
SPARSE_POINTS = 40
MAX_SERIES = 12          # series of a time series drawn (the first, by name)
MAX_BAR_VALUES = 6       # value columns of a bar chart drawn
MAX_CATEGORIES = 25      # categories of a bar chart drawn
MIN_BAR_PX = 8           # a bar at a time is at least this wide, or a single event would be invisible


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _num(v) -> bool:
    return isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)


def _as_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _label(v, words: Words | None = None) -> str:
    """A value as shown: times in Beijing time with the date; codes (regions, ports, alert kinds, severities) by
    their names in the report's language."""
    words = words or ENGLISH
    if isinstance(v, (list, tuple)):
        return ",".join(_label(x, words) for x in v)
    if isinstance(v, datetime):
        return words.beijing(v)[:16]
    return "" if v is None else words.value(str(v))


def _title(panel_or_title, words: Words) -> str:
    title = panel_or_title.get("title", "") if isinstance(panel_or_title, dict) else panel_or_title
    return words("panel." + title) if words.has("panel." + title) else title


def _names(names: list[str], words: Words) -> list[str]:
    return [words("col." + n) if words.has("col." + n) else words.value(n) for n in names]


#: the words of a report in English (the default of the drawing functions; `yrdbus report` speaks Chinese)
ENGLISH = Words("en")


def _value_text(v: float) -> str:
    """A bar's value: whole numbers with thousands separators, fractions to two places."""
    if math.isnan(v):
        return ""
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.2f}".rstrip("0") if abs(v) < 10 else f"{v:,.1f}"


def _when(v) -> datetime | None:
    if isinstance(v, datetime):
        return _utc(v)
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=timezone.utc)
    return None


def numeric_columns(rows: list[list]) -> list[int]:
    """Columns whose values are numbers (None allowed, not every one)."""
    return [i for i in range(len(rows[0]))
            if all(v is None or _num(v) for v in (r[i] for r in rows)) and any(_num(r[i]) for r in rows)]


def ratio_columns(names: list[str], rows: list[list], value_idx: list[int]) -> list[int]:
    """The value columns to draw on an axis of their own beside the counts, where on the count axis they would
    be a line along zero: a ratio by name (``ratio``, ``*_ratio``, ``*share``), or fractions between 0 and 10
    in a panel whose other value columns reach at least ten times as high (small whole numbers are counts, not
    ratios). None when there are no counts left to keep them apart from."""
    def values(i):
        return [f for f in (_as_float(r[i]) for r in rows) if not math.isnan(f)]

    named = {i for i in value_idx if names[i] == "ratio" or names[i].endswith(("_ratio", "share"))}
    small = {i for i in value_idx if i not in named and (v := values(i))
             and all(0 <= x <= 10 for x in v) and any(x != int(x) for x in v)}
    counts = [i for i in value_idx if i not in named | small]
    if not counts:
        return []
    top = max((abs(x) for i in counts for x in values(i)), default=0.0)
    return [i for i in value_idx if i in named or (i in small and top >= 10 * max(values(i)))]


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]


def _legend(fig, axes, n: int) -> None:
    """Every axis' series in one legend below the plot, as Grafana places it."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, n), fontsize=8, frameon=False)


def _table(names, rows, title, width, period, words: Words) -> Figure:
    from matplotlib.figure import Figure

    shown = rows[:20]
    fig = Figure(figsize=(width / 100, 0.8 + 0.26 * (len(shown) + 1)), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    if shown:
        cells = [[(t if len(t) <= 72 else t[:71] + "…") for t in (_label(v, words) for v in r)] for r in shown]
        # columns as wide as their longest text, so that none is cut off by a wider neighbour's share
        chars = [max(len(h), *(len(r[j]) for r in cells)) + 2 for j, h in enumerate(names)]
        widths = [c / sum(chars) for c in chars]
        table = ax.table(cellText=cells, colLabels=names, colWidths=widths, loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.25)
        for (_, col), cell in table.get_celld().items():
            cell.PAD = 0.006 / widths[col]       # the same margin in every column (PAD is a share of the cell)
    else:
        text = (words("report.no_data_between", start=words.beijing(period[0])[:16], end=words.beijing(period[1])[:16])
                if period else words("report.no_data"))
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="grey")
    more = words("report.first_rows", n=20, total=len(rows)) if len(rows) > 20 else ""
    ax.set_title(title + more, loc="left", fontsize=11)
    return fig


def _step_s(panel: dict, times: list[datetime], interval_s: float | None) -> float:
    """The panel's time step in seconds: the query's interval where it buckets time with ``$__timeInterval``,
    a day where it reads days (``$__dateFilter``), else the query's own bucket (an hour), the smallest spacing
    of its times."""
    distinct = sorted(set(times))
    spacing = min(((b - a).total_seconds() for a, b in zip(distinct, distinct[1:])), default=None)
    sql = " ".join(t.get("rawSql", "") for t in clickhouse_targets(panel))
    if "$__dateFilter" in sql:
        return 86400.0
    if interval_s and ("$__timeInterval" in sql or spacing is None):
        return interval_s
    return spacing or 3600.0


def sparse(times: list[datetime], step_s: float) -> bool:
    """Whether a series is too thin for a line: fewer than ``SPARSE_POINTS`` points, or a gap of more than a
    step between two of them (a count missing from a bucket is 0, not halfway between its neighbours)."""
    ts = sorted(times)
    return len(ts) < SPARSE_POINTS or any((b - a).total_seconds() > step_s * 1.01 for a, b in zip(ts, ts[1:]))


def _timeseries(names, rows, panel, width, period, interval_s, words: Words) -> Figure:
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    t_idx = next(i for i in range(len(rows[0])) if all(_when(r[i]) for r in rows))
    value_idx = [i for i in numeric_columns(rows) if i != t_idx]
    label_idx = [i for i in range(len(rows[0])) if i != t_idx and i not in value_idx]
    on_ratio_axis = set(ratio_columns(names, rows, value_idx))
    series: dict[str, tuple[int, list, list]] = {}     # name -> (value column, times, values)
    for r in rows:
        labels = " ".join(_label(r[i], words) for i in label_idx)
        for i in value_idx:
            key = (labels + " " + names[i]).strip() if len(value_idx) > 1 or not labels else labels
            _, xs, ys = series.setdefault(key, (i, [], []))
            xs.append(_when(r[t_idx]))
            ys.append(_as_float(r[i]))
    shown = sorted(series.items())[:MAX_SERIES]
    step = _step_s(panel, [_when(r[t_idx]) for r in rows], interval_s)

    fig = Figure(figsize=(width / 100, 4.4 + 0.2 * math.ceil(len(shown) / 4)), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twinx() if on_ratio_axis else None
    colors = dict(zip((k for k, _ in shown), _colors(len(shown))))
    lo, hi = period if period else (min(x for _, (_, xs, _) in shown for x in xs),
                                    max(x for _, (_, xs, _) in shown for x in xs) + timedelta(seconds=step))
    at: dict[datetime, list[tuple[str, float]]] = {}
    for key, (i, xs, ys) in shown:
        if sparse(xs, step):
            for x, y in zip(xs, ys):
                at.setdefault(x, []).append((key, y))
        else:
            (ax2 if i in on_ratio_axis else ax).plot(mdates.date2num(xs), ys, label=key, color=colors[key],
                                                     linewidth=1.4)
    # sparse series as bars at their times, the series with a value at one time side by side in its bucket:
    # a step wide, or MIN_BAR_PX if that is wider and the next time leaves room
    visible_s = (hi - lo).total_seconds() * MIN_BAR_PX / (width * 0.85)
    times = sorted(at)
    bars: dict[str, tuple[list, list, list]] = {}
    for x, after in zip(times, times[1:] + [None]):
        values = at[x]
        bucket_s = max(step, visible_s) if after is None else min(max(step, visible_s), (after - x).total_seconds())
        w = bucket_s / len(values) / 86400
        for j, (key, y) in enumerate(values):
            lefts, widths, heights = bars.setdefault(key, ([], [], []))
            lefts.append(mdates.date2num(x) + j * w)
            widths.append(w)
            heights.append(y)
    for key, (i, _, _) in shown:
        if key in bars:
            lefts, widths, heights = bars[key]
            (ax2 if i in on_ratio_axis else ax).bar(lefts, heights, width=widths, align="edge", label=key,
                                                    color=colors[key])
    locator = mdates.AutoDateLocator(tz=BEIJING)
    ax.xaxis_date(tz=BEIJING)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=BEIJING))
    ax.set_xlabel(words("report.beijing_time"), fontsize=9)
    ax.set_xlim(mdates.date2num(lo), mdates.date2num(hi))
    counts = [i for i in value_idx if i not in on_ratio_axis]
    ax.set_ylabel(", ".join(names[i] for i in counts), fontsize=9)
    if all(_num(r[i]) and r[i] == int(r[i]) for r in rows for i in counts):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if all(y >= 0 for _, (i, _, ys) in shown if i in counts for y in ys):
        ax.set_ylim(bottom=0)
    if ax2 is not None:
        ax2.set_ylabel(", ".join(names[i] for i in sorted(on_ratio_axis)), fontsize=9)
    ax.grid(alpha=0.3)
    more = words("report.first_series", n=MAX_SERIES, total=len(series)) if len(series) > MAX_SERIES else ""
    ax.set_title(_title(panel, words) + more, loc="left", fontsize=11)
    if len(shown) > 1 or ax2 is not None:
        _legend(fig, [a for a in (ax, ax2) if a is not None], len(shown))
    return fig


def _bars(names, rows, title, width, words: Words) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    value_idx = numeric_columns(rows)[:MAX_BAR_VALUES]
    label_idx = [i for i in range(len(rows[0])) if i not in value_idx]
    rows = rows[:MAX_CATEGORIES]
    cats = [" ".join(_label(r[i], words) for i in label_idx) or names[value_idx[0]] for r in rows]
    on_ratio_axis = set(ratio_columns(names, rows, value_idx))
    fig = Figure(figsize=(width / 100, 1.6 + 0.34 * len(cats) * max(1, len(value_idx)) ** 0.5), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twiny() if on_ratio_axis else None
    height = 0.8 / max(1, len(value_idx))
    for k, (i, color) in enumerate(zip(value_idx, _colors(len(value_idx)))):
        vals = [_as_float(r[i]) for r in rows]
        axis = ax2 if i in on_ratio_axis else ax
        bars = axis.barh([j + k * height for j in range(len(cats))], vals, height=height, label=names[i], color=color)
        axis.bar_label(bars, labels=[_value_text(v) for v in vals], fontsize=7, padding=2)
        axis.margins(x=0.08)
    ax.set_yticks([j + height * (len(value_idx) - 1) / 2 for j in range(len(cats))], cats, fontsize=8)
    ax.invert_yaxis()
    counts = [i for i in value_idx if i not in on_ratio_axis]
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,g}"))
    if all(_num(r[i]) and r[i] == int(r[i]) for r in rows for i in counts):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax2 is not None:
        ax.set_xlabel(", ".join(names[i] for i in counts), fontsize=9)
        ax2.set_xlabel(", ".join(names[i] for i in value_idx if i in on_ratio_axis), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, loc="left", fontsize=11)
    if len(value_idx) > 1:
        _legend(fig, [a for a in (ax, ax2) if a is not None], len(value_idx))
    return fig


def figure(names: list[str], rows: list[list], panel: dict, width: int = 1000,
           period: tuple[datetime, datetime] | None = None, interval_s: float | None = None,
           note: str | None = None, words: Words | None = None) -> Figure:
    """A panel's rows drawn as Grafana would show them: a table, lines over time (bars for a sparse series),
    or bars by category; ratios on an axis of their own beside the counts. ``period`` spans the time axis
    (and is named when there is nothing to show), ``interval_s`` is the query's interval, ``note`` is written
    at the top right (what was done to the numbers, such as a scaled baseline). ``words``: the language of the
    titles, column names and codes (English unless given); times are Beijing time either way."""
    words = words or ENGLISH
    kind, title = panel.get("type"), _title(panel, words)
    names = _names(names, words)
    if kind == "table" or not rows:
        fig = _table(names, rows, title, width, period, words)
    elif kind == "timeseries":
        fig = _timeseries(names, rows, panel, width, period, interval_s, words)
    else:   # barchart, piechart, stat, bargauge: categories against their numbers
        fig = _bars(names, rows, title, width, words)
    if note:
        fig.axes[0].set_title(note, loc="right", fontsize=9, color="#a0522d")
    return fig


#: a font with Chinese glyphs (Debian: fonts-wqy-microhei; `make test` installs it), tried in this order
CJK_FONTS = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Source Han Sans SC")


def cjk_font() -> str | None:
    """The first of ``CJK_FONTS`` matplotlib finds on this machine, or None. matplotlib keeps its list of fonts in
    a per-user cache made when it first ran: a font installed since (as `make test` does) is added from the
    system's font folders."""
    from matplotlib import font_manager

    def find() -> str | None:
        for name in CJK_FONTS:
            try:
                font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
                return name
            except ValueError:
                continue
        return None

    found = find()
    if found is None:
        for path in font_manager.findSystemFonts():
            if any(k in Path(path).name.lower() for k in ("wqy", "notosanscjk", "sourcehansans")):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        found = find()
    return found


def draw(names: list[str], rows: list[list], panel: dict, path: Path, width: int = 1000, **how) -> None:
    """The panel's ``figure`` as a PNG file at ``path`` (in Chinese with a CJK font, ``cjk_font``)."""
    import matplotlib

    words = how.get("words") or ENGLISH
    font = cjk_font() if words.lang != "en" else None
    if words.lang != "en" and font is None:
        raise ReportError("no font with Chinese glyphs on this machine (one of " + ", ".join(CJK_FONTS) + "; Debian: "
                          "apt-get install fonts-wqy-microhei): install one, or --lang en")
    with matplotlib.rc_context({"font.family": "sans-serif",
                                "font.sans-serif": ([font] if font else []) + ["DejaVu Sans"],
                                "axes.unicode_minus": False}):
        figure(names, rows, panel, width, **how).savefig(path, dpi=100)


def render_panel(client, panel: dict, start: datetime, end: datetime, out: Path, width: int = 1000,
                 variables=None, baseline_scale: float = 1.0, words: Words | None = None) -> dict:
    names, rows = run_panel(client, panel, start, end, width, variables)
    scaled = baseline_scale != 1 and any(n in BASELINE_COLUMNS for n in names)
    rows = scale_baseline(names, rows, baseline_scale)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_slug(panel['dashboard'].removeprefix('yrdbus-'))}-{_slug(panel['title'])}.png"
    words = words or ENGLISH
    draw(names, rows, panel, path, width, period=(start, end), interval_s=grafana_interval(start, end, width),
         note=words("report.baseline_note", scale=f"{baseline_scale:g}") if scaled else None, words=words)
    return {"dashboard": panel["dashboard"], "title": panel["title"], "shown_title": _title(panel, words),
            "file": str(path), "rows": len(rows), "columns": names,
            **({"baseline_scale": baseline_scale} if scaled else {})}


def write_index(out: Path, written: list[dict], period: Period, source: str, baseline_scale: float = 1.0,
                words: Words | None = None) -> dict:
    """report.json (UTC, for scripts) and index.html (in the report's language, Beijing time)."""
    from html import escape

    words = words or ENGLISH
    summary = {"from": period.start.isoformat(), "to": period.end.isoformat(), "period": period.reason,
               "source": source, "baseline_scale": baseline_scale, "lang": words.lang, "panels": written}
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    scale = words("report.baseline_scale", scale=f"{baseline_scale:g}") if baseline_scale != 1 else ""
    title = words("report.title")
    html = [f"<!doctype html><html lang='{words.lang}'><meta charset='utf-8'><title>{escape(title)}</title>",
            f"<h1>{escape(title)}</h1><p>" + escape(words(
                "report.period", start=words.beijing(period.start), end=words.beijing(period.end),
                reason=period.reason, scale=scale, source=source)) + "</p>"]
    for w in written:
        shown = escape(w.get("shown_title") or w["title"])
        html.append(f"<h2>{shown}</h2><img src='{escape(Path(w['file']).name)}' alt='{shown}'>")
    (out / "index.html").write_text("\n".join(html) + "\n", encoding="utf-8")
    return summary
