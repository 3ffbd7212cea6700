"""What the live query endpoint admits: a statement parsed by ClickHouse's own parser, judged by allow-lists.

The embedded engine (chDB) behaves like ``clickhouse-local``: ``INTO OUTFILE`` writes files on the host,
format settings that name files (``format_template_resultset``, ``format_schema`` ...) open them and echo
their contents in errors, and ``readonly`` stops neither. So the endpoint does not look for what is
forbidden; it admits what it understands and refuses the rest:

1. **One statement, as ClickHouse reads it.** ``formatQuery`` parses the text with the engine's parser
   (a syntax error is answered as ClickHouse answers it, code 62) and gives its canonical form: comments
   gone, keywords and spacing canonical. The canonical text is what is checked *and what is run*, so no
   difference between a checker's parser and the engine's can be exploited.
2. **An output clause is refused.** ``INTO OUTFILE`` (found in the canonical tokens, and as the literal
   child of the statement in ``EXPLAIN AST``) is refused; ``FORMAT`` must name an output format of
   ``FORMATS`` (no ``Template``, ``Protobuf``, ``CapnProto``: they read files named by settings).
3. **Settings from an allow-list**, in ``SETTINGS`` clauses at any depth and in the URL alike
   (``ALLOWED_SETTINGS``); the settings the endpoint fixes (``PROTECTED``) cannot be set at all, and a
   few (``LOWER_ONLY``) only below the endpoint's own value. The number of ``SETTINGS`` clauses the
   tokens show must equal the ``Set`` nodes of the engine's AST, so the tokenizer cannot miss one.
4. **Statements by kind** (``ROOTS``): SELECT (with UNION, INTERSECT, EXCEPT, WITH), DESCRIBE, EXISTS,
   SHOW TABLES / DATABASES / SETTINGS / COLUMNS / CREATE TABLE / INDEX / FUNCTIONS, EXPLAIN of a SELECT.
5. **Table functions from an allow-list** (``TABLE_FUNCTIONS``: numbers, zeros, values ...); **scalar
   functions that reach outside the store** (``file``, ``url``, ``catboostEvaluate`` ...) refused wherever
   they stand.
6. **Tables as the engine resolves them** (``EXPLAIN QUERY TREE``: views, ``IN`` subqueries, CTEs and the
   client's current database all resolved to ``database.table``): system tables from ``SYSTEM_TABLES``
   only (no ``processes``, ``query_log``: they show other users' queries); a region-scoped user reads the
   store's regional tables (filtered by region) and its reference tables, nothing else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from connectors.store.access import REGION_CONDITIONS


class QueryRefused(Exception):
    """A request the endpoint does not run; ``code`` is the ClickHouse error code it answers with."""

    def __init__(self, message: str, code: int = 164, status: int = 403):
        super().__init__(message)
        self.code = code
        self.status = status


READONLY, ACCESS_DENIED, SYNTAX_ERROR, UNKNOWN_FORMAT = 164, 497, 62, 73

#: statement kinds (the root of ``EXPLAIN AST``) the endpoint runs
ROOTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery", "DescribeQuery", "ExistsTableQuery",
                   "ExistsDatabaseQuery", "ShowTables", "ShowColumns", "ShowCreateTableQuery", "ShowIndexes",
                   "ShowFunctions", "Explain"})
#: what a ``ShowTables`` root may be: ClickHouse parses SHOW CLUSTERS, MERGES, FILESYSTEM CACHES ... as one kind
SHOW_FORMS = re.compile(r"^SHOW (?:FULL )?(?:TEMPORARY )?(?:TABLES|DATABASES|DICTIONARIES|(?:CHANGED )?SETTINGS)\b")
#: EXPLAIN kinds that look at a query without reading its data
EXPLAIN_KINDS = frozenset({"EXPLAIN", "EXPLAIN AST", "EXPLAIN SYNTAX", "EXPLAIN QUERY TREE", "EXPLAIN PIPELINE",
                           "EXPLAIN ESTIMATE", "EXPLAIN PLAN"})
SELECT_ROOTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery"})

#: output formats that write to the answer only (none reads a file named by a setting)
FORMATS = frozenset("""
TabSeparated TabSeparatedRaw TabSeparatedWithNames TabSeparatedWithNamesAndTypes TabSeparatedRawWithNames
TabSeparatedRawWithNamesAndTypes TSV TSVRaw TSVWithNames TSVWithNamesAndTypes TSVRawWithNames TSVRawWithNamesAndTypes
Raw RawWithNames RawWithNamesAndTypes CSV CSVWithNames CSVWithNamesAndTypes
JSON JSONStrings JSONCompact JSONCompactStrings JSONColumns JSONCompactColumns JSONColumnsWithMetadata
JSONEachRow JSONEachRowWithProgress JSONStringsEachRow JSONStringsEachRowWithProgress JSONCompactEachRow
JSONCompactEachRowWithNames JSONCompactEachRowWithNamesAndTypes JSONCompactStringsEachRow
JSONCompactStringsEachRowWithNames JSONCompactStringsEachRowWithNamesAndTypes JSONObjectEachRow NDJSON JSONLines
PrettyJSONEachRow PrettyJSONLines PrettyNDJSON
Native RowBinary RowBinaryWithNames RowBinaryWithNamesAndTypes Values Vertical Markdown XML TSKV Null
Pretty PrettyNoEscapes PrettyMonoBlock PrettyNoEscapesMonoBlock PrettyCompact PrettyCompactNoEscapes
PrettyCompactMonoBlock PrettyCompactNoEscapesMonoBlock PrettySpace PrettySpaceNoEscapes PrettySpaceMonoBlock
PrettySpaceNoEscapesMonoBlock Parquet Arrow ArrowStream ORC Avro MsgPack BSONEachRow LineAsString RawBLOB
""".split())
FORMATS_LOWER = {f.lower(): f for f in FORMATS}

#: settings the endpoint fixes: time and result limits, memory, row filters, read-only mode
PROTECTED = frozenset({"readonly", "allow_ddl", "allow_introspection_functions", "max_result_rows",
                       "max_result_bytes", "result_overflow_mode", "timeout_overflow_mode", "max_execution_time_leaf",
                       "timeout_overflow_mode_leaf", "additional_table_filters", "additional_result_filter",
                       "max_memory_usage", "max_memory_usage_for_user", "max_concurrent_queries_for_user"})
#: settings a client may set, but only to at most the endpoint's own value (0 means "no limit": refused)
LOWER_ONLY = frozenset({"max_execution_time", "max_threads"})
#: settings a client may set: how results look and how a read is planned; none names a file or a host
ALLOWED_SETTINGS = frozenset("""
max_execution_time max_threads max_block_size max_rows_to_read max_bytes_to_read max_rows_to_group_by
max_rows_to_sort max_bytes_to_sort max_rows_in_distinct max_bytes_in_distinct max_rows_in_join max_bytes_in_join
read_overflow_mode group_by_overflow_mode
sort_overflow_mode distinct_overflow_mode join_overflow_mode
output_format_json_quote_64bit_integers output_format_json_quote_64bit_floats output_format_json_quote_denormals
output_format_json_quote_decimals output_format_json_escape_forward_slashes output_format_json_named_tuples_as_objects
output_format_json_array_of_rows output_format_json_validate_utf8 output_format_json_pretty_print
output_format_write_statistics output_format_decimal_trailing_zeros output_format_pretty_max_rows
output_format_pretty_max_column_pad_width output_format_pretty_max_value_width output_format_pretty_color
output_format_pretty_grid_charset output_format_pretty_row_numbers output_format_pretty_display_footer_column_names
output_format_csv_crlf_end_of_line output_format_tsv_crlf_end_of_line output_format_arrow_string_as_string
output_format_arrow_low_cardinality_as_dictionary output_format_parquet_string_as_string
output_format_orc_string_as_string output_format_native_encode_types_in_binary_format
output_format_binary_encode_types_in_binary_format output_format_native_write_json_as_string
output_format_binary_write_json_as_string output_format_json_quote_64bit_integers_in_response
format_csv_delimiter format_csv_allow_single_quotes format_csv_allow_double_quotes format_csv_null_representation
format_tsv_null_representation date_time_output_format date_time_input_format
date_time_64_output_format_cut_trailing_zeros_align_to_groups_of_thousands interval_output_format
bool_true_representation bool_false_representation
join_use_nulls join_algorithm joined_subquery_requires_alias any_join_distinct_right_table_keys
prefer_column_name_to_alias extremes totals_mode totals_auto_threshold
aggregate_functions_null_for_empty count_distinct_implementation cast_keep_nullable data_type_default_nullable
session_timezone transform_null_in union_default_mode except_default_mode intersect_default_mode final
do_not_merge_across_partitions_select_final group_by_use_nulls limit offset force_primary_key
force_index_by_date use_skip_indexes optimize_read_in_order optimize_aggregation_in_order
optimize_move_to_prewhere optimize_use_projections optimize_trivial_count_query describe_compact_output
describe_include_subcolumns show_table_uuid_in_table_create_query_if_not_nil enable_optimize_predicate_expression
use_uncompressed_cache asterisk_include_alias_columns asterisk_include_materialized_columns
allow_experimental_window_functions log_comment
date_time_input_format cast_string_to_dynamic_use_inference
""".split())

#: table functions that read only what they are given (no file, host, process or table around a filter)
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateSeries",
                             "values", "null", "generateRandom"})
#: table functions that read tables the checks of tables cannot see (``merge('system', 'processes')``, a
#: ``view(...)`` whose tables the query tree does not list) or around the row filters: refused to everyone,
#: with a message of their own for a region-scoped user
REGION_BYPASS = frozenset({"merge", "view", "viewIfPermitted", "viewExplain", "mergeTreeIndex",
                           "mergeTreeAnalyzeIndexes", "mergeTreeProjection"})
#: functions that read, write or connect outside the store, or show the host's secrets: refused anywhere
OUTSIDE_FUNCTIONS = frozenset({
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "hdfs", "hdfsCluster", "azureBlobStorage",
    "azureBlobStorageCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas", "mysql", "postgresql",
    "mongodb", "redis", "sqlite", "jdbc", "odbc", "executable", "executablePool", "input", "iceberg", "icebergS3",
    "icebergAzure", "icebergHDFS", "icebergLocal", "deltaLake", "deltaLakeAzure", "hudi", "dictionary", "loop",
    "fuzzJSON", "fuzzQuery", "arrowFlight", "arrowflight", "ytsaurus", "paimon", "format", "catboostEvaluate",
    "naiveBayesClassifier", "joinGet", "joinGetOrNull", "formatRow", "formatRowNoNewline", "showCertificate",
    "getClientHTTPHeader", "getServerSetting", "getMergeTreeSetting", "filesystemAvailable", "filesystemCapacity",
    "filesystemUnreserved", "generateSerialID", "addressToLine", "addressToLineWithInlines", "addressToSymbol",
    "demangle", "kafka", "nats", "rabbitmq", "timeSeriesData", "timeSeriesMetrics", "timeSeriesTags", "prometheusQuery",
    "prometheusQueryRange"})
#: system tables anyone may read: metadata and constants, never other users' queries or the host
SYSTEM_TABLES = frozenset({"one", "numbers", "numbers_mt", "zeros", "zeros_mt", "tables", "columns", "databases",
                           "functions", "table_functions", "formats", "data_type_families", "settings", "time_zones",
                           "build_options", "contributors", "licenses", "collations", "aggregate_function_combinators",
                           "table_engines", "dictionaries", "keywords"})
#: the store's tables without regional rows that a region-scoped user may read
REFERENCE_TABLES = frozenset({"ref_regions", "ref_stations", "ref_ports", "ref_countries", "ref_flow_baseline",
                              "regions", "stations", "ports"})
#: the store's views that read only filtered tables (the filters hold inside views)
FILTERED_VIEWS = frozenset({"cases_current"})
METADATA_DATABASES = frozenset({"information_schema", "INFORMATION_SCHEMA"})


# --------------------------------------------------------------------------- canonical tokens
_TOKEN = re.compile(r"""
    (?P<str>'(?:[^'\\]|\\.|'')*')
  | (?P<qid>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
  | (?P<param>\{[A-Za-z_][A-Za-z0-9_]*:[^{}]*\})
  | (?P<heredoc>\$(?P<tag>[A-Za-z0-9_]*)\$.*?\$(?P=tag)\$)
  | (?P<num>(?:0[xX][0-9A-Fa-f]+|0[bB][01]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op>::|->|<=|>=|!=|<>|==|\|\||[-+*/%=<>(),.;\[\]{}:?^@!|&~\#])
  | (?P<ws>\s+)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    def word(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    def name(self) -> str:
        """An identifier's name, unquoted."""
        if self.kind == "qid":
            return self.text[1:-1].replace(self.text[0] * 2, self.text[0]).replace("\\" + self.text[0], self.text[0])
        return self.text


def tokens(text: str) -> list[Token]:
    """The tokens of ClickHouse's canonical text of a statement; anything unexpected refuses the statement."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise QueryRefused(f"cannot read the statement at offset {pos} ({text[pos:pos + 20]!r})", ACCESS_DENIED)
        if m.lastgroup != "ws":
            out.append(Token(m.lastgroup, m.group(0), m.start(), m.end()))
        pos = m.end()
    return out


@dataclass
class Clauses:
    """What the canonical tokens say of a statement's output and settings."""

    formats: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, end) of each FORMAT clause
    settings: list[str] = field(default_factory=list)                  # every setting name of every SETTINGS clause
    settings_values: list[tuple[str, str]] = field(default_factory=list)  # (lower-case name, value text), each
    settings_clauses: int = 0
    outfile: bool = False


def clauses(toks: list[Token]) -> Clauses:
    c = Clauses()
    i, n = 0, len(toks)
    while i < n:
        w = toks[i].word()
        if w == "INTO" and i + 1 < n and toks[i + 1].word() == "OUTFILE":
            c.outfile = True
        elif w == "FORMAT" and i + 1 < n and toks[i + 1].kind in ("word", "qid") \
                and not (i + 2 < n and toks[i + 2].text == "("):
            c.formats.append((toks[i + 1].name(), toks[i].start, toks[i + 1].end))
        elif w == "SETTINGS" and i + 2 < n and toks[i + 1].kind in ("word", "qid") and toks[i + 2].text == "=":
            c.settings_clauses += 1
            i += 1
            while i + 1 < n and toks[i].kind in ("word", "qid") and toks[i + 1].text == "=":
                name = toks[i].name()
                i, value = _value(toks, i + 2)
                c.settings.append(name)
                c.settings_values.append((name.lower(), value))
                if i < n and toks[i].text == ",":
                    i += 1
                    continue
                break
            continue
        i += 1
    return c


def _value(toks: list[Token], i: int) -> tuple[int, str]:
    """Skip one setting value (a literal, a signed number, or a bracketed literal); its text and where it ends."""
    start = i
    if i < len(toks) and toks[i].text in ("-", "+"):
        i += 1
    if i < len(toks) and toks[i].text in ("(", "[", "{"):
        depth = 0
        while i < len(toks):
            if toks[i].text in ("(", "[", "{"):
                depth += 1
            elif toks[i].text in (")", "]", "}"):
                depth -= 1
                if depth == 0:
                    i += 1
                    break
            i += 1
    elif i < len(toks):
        i += 1
    return i, " ".join(t.text for t in toks[start:i])


# --------------------------------------------------------------------------- the engine's AST
@dataclass
class Node:
    kind: str
    text: str
    depth: int
    children: list["Node"] = field(default_factory=list)

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


def parse_ast(text: str) -> Node:
    """The tree of an ``EXPLAIN AST`` answer (one node a line, one space of indent a level)."""
    root = None
    stack: list[Node] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        body = line.strip()
        node = Node(body.split(" ", 1)[0], body, depth)
        while stack and stack[-1].depth >= depth:
            stack.pop()
        if stack:
            stack[-1].children.append(node)
        elif root is None:
            root = node
        else:
            raise QueryRefused("more than one statement", SYNTAX_ERROR, 400)
        stack.append(node)
    if root is None:
        raise QueryRefused("an empty query", SYNTAX_ERROR, 400)
    return root


def functions_of(root: Node) -> set[str]:
    return {n.text.split()[1] for n in root.walk() if n.kind == "Function" and len(n.text.split()) > 1}


def table_functions_of(root: Node) -> list[str]:
    out = []
    for n in root.walk():
        if n.kind == "TableExpression":
            for c in n.children:
                if c.kind == "Function":
                    out.append(c.text.split()[1])
    return out


def tables_of_query_tree(text: str) -> tuple[set[str], set[str]]:
    """(``database.table`` of every TABLE node, names of every TABLE_FUNCTION node) of ``EXPLAIN QUERY TREE``."""
    tables = set(re.findall(r"\bTABLE id: \d+(?:, alias: [^,]+)?, table_name: ([^\s,]+)", text))
    funcs = set(re.findall(r"\bTABLE_FUNCTION id: \d+(?:, alias: [^,]+)?, table_function_name: (\w+)", text))
    return tables, funcs


# --------------------------------------------------------------------------- the verdict
@dataclass
class Admitted:
    sql: str                      # the canonical text to run
    kind: str                     # the statement's root kind
    format: str | None            # the FORMAT clause's format, if any
    settings: list[tuple[str, str]]  # every setting of the query's SETTINGS clauses (lower-case name, value text)


def check_setting(name: str, *, where: str) -> None:
    low = name.lower()
    if low in PROTECTED:
        raise QueryRefused(f"setting {name} is fixed by this endpoint and cannot be changed ({where})", READONLY)
    if name not in ALLOWED_SETTINGS and low not in ALLOWED_SETTINGS:
        raise QueryRefused(f"setting {name} is not allowed on this endpoint ({where}); the settings a client may "
                           f"set are listed in docs/security.md", READONLY)


def check_format(name: str, *, where: str) -> str:
    known = FORMATS_LOWER.get(name.lower())
    if known is None:
        raise QueryRefused(f"format {name} is not allowed on this endpoint ({where}); output formats such as "
                           f"TabSeparated, CSV, JSON, JSONEachRow, Native, Parquet are", ACCESS_DENIED)
    return known


class Policy:
    """Judges one statement with the engine's parser (``ask(sql, params) -> text`` runs a query on a handle
    that reads nothing of the store's data: ``formatQuery`` and ``EXPLAIN``)."""

    def __init__(self, ask, store_database: str):
        self.ask = ask
        self.store_database = store_database

    def admit(self, sql: str, params: dict[str, str], database: str, regions: tuple[str, ...] | None) -> Admitted:
        text = sql.strip()
        while text.endswith(";"):
            text = text[:-1].rstrip()
        if not text:
            raise QueryRefused("an empty query", SYNTAX_ERROR, 400)
        if _WRITE.match(text):
            raise QueryRefused(f"this endpoint is read-only: writes are not allowed here "
                               f"({_statement_words(text)})", READONLY)
        try:
            canonical = self.ask(f"SELECT formatQuery({_literal(text)})", {}).rstrip("\n")
        except Exception as exc:  # the engine's parser refused it: say so as ClickHouse would, of the client's text
            message = _IN_SCOPE.sub("", str(exc)[str(exc).find("Code:"):] if "Code:" in str(exc) else str(exc))
            m = re.search(r"Code:\s*(\d+)", message)
            raise QueryRefused(message, int(m.group(1)) if m else SYNTAX_ERROR, 400) from None
        toks = tokens(canonical)
        c = clauses(toks)
        if c.outfile:
            raise QueryRefused("INTO OUTFILE is not allowed on this endpoint: it writes a file on the host",
                               ACCESS_DENIED)
        fmt = None
        for name, _, _ in c.formats:
            fmt = check_format(name, where="FORMAT clause")
        for name in c.settings:
            check_setting(name, where="SETTINGS clause")
        # the engine's tree, on the text without its FORMAT clause (EXPLAIN would format its own answer with it)
        bare = canonical
        for _, start, end in reversed(c.formats):
            bare = bare[:start] + bare[end:]
        ast = parse_ast(self.ask(f"EXPLAIN AST {bare}", params))
        self._check_tree(ast, c, canonical, regions)
        self._check_system_tables(ast, database)
        if ast.kind in SELECT_ROOTS:
            self._check_tables(self.ask(f"EXPLAIN QUERY TREE {bare}", params), regions)
        elif regions:
            self._check_named_tables(ast, database, regions)
        return Admitted(canonical, ast.kind, fmt, list(c.settings_values))

    def _check_tree(self, ast: Node, c: Clauses, canonical: str, regions) -> None:
        if ast.kind not in ROOTS:
            raise QueryRefused(f"this endpoint is read-only: {_statement_words(canonical)} is not allowed "
                               f"(allowed: SELECT, WITH, DESCRIBE, EXISTS, SHOW TABLES/DATABASES/SETTINGS/COLUMNS/"
                               f"CREATE TABLE, EXPLAIN)", READONLY)
        if ast.kind == "ShowTables" and not SHOW_FORMS.match(canonical):
            raise QueryRefused(f"this endpoint is read-only: {_statement_words(canonical)} is not allowed "
                               f"(allowed: SHOW TABLES, DATABASES, DICTIONARIES, SETTINGS)", READONLY)
        explain_sets = 0
        if ast.kind == "Explain":
            kind = ast.text.split(" (children")[0]
            if kind not in EXPLAIN_KINDS or (regions and kind == "EXPLAIN ESTIMATE"):
                raise QueryRefused(f"{kind} is not allowed on this endpoint", ACCESS_DENIED)
            inner = [ch for ch in ast.children if ch.kind not in ("Set", "Identifier")]
            if len(inner) != 1 or inner[0].kind not in SELECT_ROOTS:
                raise QueryRefused("EXPLAIN is allowed of a SELECT only", ACCESS_DENIED)
            explain_sets = sum(1 for ch in ast.children if ch.kind == "Set")
        # INTO OUTFILE is a literal child of the statement itself
        if any(ch.kind == "Literal" for ch in ast.children):
            raise QueryRefused("INTO OUTFILE is not allowed on this endpoint: it writes a file on the host",
                               ACCESS_DENIED)
        sets = sum(1 for n in ast.walk() if n.kind == "Set") - explain_sets
        if sets != c.settings_clauses:
            raise QueryRefused("the statement's SETTINGS could not be read; write them as "
                               "SETTINGS name = value, ...", ACCESS_DENIED)
        outside = sorted(functions_of(ast) & OUTSIDE_FUNCTIONS)
        if outside:
            raise QueryRefused(f"function {outside[0]} is not allowed on this endpoint (it reads, writes or "
                               f"connects outside the store)", ACCESS_DENIED)
        for f in table_functions_of(ast):
            self._check_table_function(f, regions)

    def _check_table_function(self, name: str, regions) -> None:
        if regions and name in REGION_BYPASS:
            raise QueryRefused(f"table function {name} is not allowed to a region-scoped user (it reads around "
                               f"the region filter)", ACCESS_DENIED)
        if name in REGION_BYPASS:
            raise QueryRefused(f"table function {name} is not allowed on this endpoint (it reads tables around "
                               f"the endpoint's checks); name the tables instead", ACCESS_DENIED)
        if name in OUTSIDE_FUNCTIONS or name not in TABLE_FUNCTIONS:
            raise QueryRefused(f"table function {name} is not allowed on this endpoint (it reads outside the "
                               f"store)", ACCESS_DENIED)

    def _check_tables(self, tree: str, regions) -> None:
        tables, funcs = tables_of_query_tree(tree)
        for f in funcs:
            self._check_table_function(f, regions)
        for full in tables:
            self._check_table(full, regions)

    def _check_system_tables(self, ast: Node, database: str) -> None:
        """System tables named anywhere in the statement (also where the query tree does not look)."""
        for n in ast.walk():
            if n.kind == "TableIdentifier":
                name = _table_name(n)
                full = name if "." in name else f"{database}.{name}"
                if full.partition(".")[0].strip("`") == "system":
                    self._check_table(full, None)

    def _check_named_tables(self, ast: Node, database: str, regions) -> None:
        """Tables a non-SELECT statement names (DESCRIBE, SHOW COLUMNS ...), resolved against ``database``."""
        for n in ast.walk():
            if n.kind == "TableIdentifier":
                name = _table_name(n)
                self._check_table(name if "." in name else f"{database}.{name}", regions)

    def _check_table(self, full: str, regions) -> None:
        db, _, table = full.partition(".")
        db, table = db.strip("`"), table.strip("`")
        if db == "system":
            if table not in SYSTEM_TABLES:
                raise QueryRefused(f"system.{table} is not readable on this endpoint (system tables that show "
                                   f"other users' queries or the host are not)", ACCESS_DENIED)
            return
        if db in METADATA_DATABASES or not regions:
            return
        if db != self.store_database or table not in (set(REGION_CONDITIONS) | REFERENCE_TABLES | FILTERED_VIEWS
                                                      | {"subject_events"}):
            raise QueryRefused(f"{db}.{table} is not readable by a region-scoped user (only the store's "
                               f"regional tables, filtered by region, and its reference tables are)", ACCESS_DENIED)


_WRITE = re.compile(r"^(?:\s|--[^\n]*\n|/\*.*?\*/|\()*(?:INSERT|ALTER|DELETE|UPDATE|TRUNCATE|DROP|CREATE|RENAME|"
                    r"OPTIMIZE|ATTACH|DETACH|GRANT|REVOKE|KILL|SYSTEM|BACKUP|RESTORE|EXCHANGE|UNDROP|MOVE)\b",
                    re.IGNORECASE | re.DOTALL)
_IN_SCOPE = re.compile(r"\s*:?\s*In scope SELECT formatQuery\(.*?\)\.(?=\s*\(|\s*$)", re.DOTALL)


def _table_name(node: Node) -> str:
    """The table an ``EXPLAIN AST`` TableIdentifier node names; a name that is empty or blank (``DESCRIBE ' '``)
    is refused as ClickHouse refuses an unknown table, not taken for a missing field."""
    parts = node.text.split()
    if len(parts) < 2:
        raise QueryRefused("a table name that is empty or blank names no table", 60, 404)
    return parts[1]


def _statement_words(canonical: str) -> str:
    words = re.findall(r"[A-Za-z]+", canonical)[:2]
    return " ".join(words).upper() or "an empty query"


def _literal(v) -> str:
    s = str(v)
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
