"""The analysts' query library: named, parameterized SQL files, run on the store or its live endpoint.

Each ``<name>.sql`` starts with comment lines that describe it::

    -- title: A subject's history across all regions
    -- description: ... (continued on lines starting with "--   ")
    -- param subject String: the subject token
    -- param since DateTime64(3) = 1970-01-01 00:00:00: from this event time (UTC)

and uses ClickHouse query parameters (``{subject:String}``), bound by the server, never pasted into the
text. Table names are unqualified: the queries run in the bus's database (``yrdbus``), so the same files
work in clickhouse-client, Grafana and ``yrdbus query``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DIR = Path(__file__).resolve().parent
_PARAM = re.compile(r"^--\s*param\s+(\w+)\s+([^=:]+?(?:\([^)]*\))?)\s*(?:=\s*(.*?))?\s*:\s+(.*)$")


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None
    help: str

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class NamedQuery:
    name: str
    title: str
    description: str
    params: tuple[Param, ...]
    sql: str
    path: Path = field(compare=False)

    def bind(self, given: dict[str, str]) -> dict[str, str]:
        """Parameter values for the server: the given ones, defaults for the rest; errors name the parameter."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise QueryError(f"query {self.name}: no parameter {unknown[0]!r}; it takes "
                             f"{', '.join(known) or 'no parameters'}")
        out = {}
        for p in self.params:
            if p.name in given:
                out[p.name] = given[p.name]
            elif p.default is not None:
                out[p.name] = p.default
            else:
                raise QueryError(f"query {self.name}: parameter {p.name} ({p.type}) is required: {p.help}")
        return out


def parse(path: Path) -> NamedQuery:
    title, description, params = path.stem, [], []
    in_description = False
    for line in path.read_text().splitlines():
        if not line.startswith("--"):
            break
        if line.startswith("-- title:"):
            title, in_description = line.split(":", 1)[1].strip(), False
        elif line.startswith("-- description:"):
            description.append(line.split(":", 1)[1].strip())
            in_description = True
        elif line.startswith("-- param "):
            in_description = False
            m = _PARAM.match(line)
            if not m:
                raise QueryError(f"{path.name}: cannot read parameter line {line!r}; expected "
                                 f"'-- param name Type [= default]: help'")
            default = m.group(3)
            if default is not None and len(default) >= 2 and default[0] == default[-1] == "'":
                default = default[1:-1]
            params.append(Param(m.group(1), m.group(2).strip(), default, m.group(4).strip()))
        elif in_description and line.startswith("--  "):
            description.append(line[2:].strip())
    used = set(re.findall(r"\{(\w+):", path.read_text()))
    declared = {p.name for p in params}
    if used != declared:
        raise QueryError(f"{path.name}: parameters used {sorted(used)} and declared {sorted(declared)} differ")
    return NamedQuery(path.stem, title, " ".join(description), tuple(params), path.read_text(), path)


def library(directory: Path = DIR) -> dict[str, NamedQuery]:
    return {p.stem: parse(p) for p in sorted(directory.glob("*.sql"))}


def get(name: str) -> NamedQuery:
    lib = library()
    if name not in lib:
        raise QueryError(f"no query named {name!r}; there are: {', '.join(lib)}")
    return lib[name]


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise QueryError(f"--param {pair!r}: expected name=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


def run(client, name: str, given: dict[str, str] | None = None):
    """Run a named query with clickhouse-connect ``client`` (database set to the bus's); a QueryResult."""
    q = get(name)
    return client.query(q.sql, parameters=q.bind(given or {}))
