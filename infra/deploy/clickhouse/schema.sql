-- yrdbus schema for cluster yrd, database yrdbus, TTL none
CREATE DATABASE IF NOT EXISTS yrdbus ON CLUSTER yrd;
CREATE TABLE IF NOT EXISTS yrdbus.schema_migrations ON CLUSTER yrd
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/yrdbus/schema_migrations', '{replica}')
ORDER BY version;

-- migration 0001 events
-- Raw events of every kind, as published by the stations and derived by the stream layer.
-- Sorting keys follow the analysts' questions: a subject's history (clearances, risk scores),
-- a region, kind and time (alerts), a case's lifecycle (cases), a kind over time (derived alerts).
-- Monthly partitions on event time; TTL from YRDBUS_CLICKHOUSE_TTL_DAYS (0: keep for ever).
-- non_replicated_deduplication_window makes insert_deduplication_token work on a single node
-- (replicated tables deduplicate through Keeper instead): the sink's replay after a crash is a no-op.
-- clearances: small granules (256 rows) so that a subject lookup reads little in each monthly part.
-- distribute: cityHash64(subject)
CREATE TABLE IF NOT EXISTS yrdbus.clearances_local ON CLUSTER yrd
(
    event_id            UUID,
    region              LowCardinality(String),
    station_id          LowCardinality(String),
    port_code           LowCardinality(String),
    occurred_at         DateTime64(3, 'UTC'),
    published_at        DateTime64(3, 'UTC'),
    subject             String,
    name_token          Nullable(String),
    direction           LowCardinality(String),
    document_type       LowCardinality(String),
    document_country    LowCardinality(String),
    nationality         LowCardinality(String),
    conveyance_type     LowCardinality(String),
    conveyance_id       String,
    scheduled_port      LowCardinality(Nullable(String)),
    lane                LowCardinality(String),
    entry_basis         LowCardinality(String),
    decision            LowCardinality(String),
    origin_country      LowCardinality(Nullable(String)),
    destination_country LowCardinality(Nullable(String)),
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/yrdbus/clearances_local', '{replica}')
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (subject, occurred_at)
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.clearances ON CLUSTER yrd AS yrdbus.clearances_local
ENGINE = Distributed(yrd, yrdbus, clearances_local, cityHash64(subject));
-- distribute: cityHash64(coalesce(subject, conveyance_id, toString(event_id)))
CREATE TABLE IF NOT EXISTS yrdbus.alerts_local ON CLUSTER yrd
(
    event_id         UUID,
    region           LowCardinality(String),
    station_id       LowCardinality(String),
    port_code        LowCardinality(String),
    occurred_at      DateTime64(3, 'UTC'),
    published_at     DateTime64(3, 'UTC'),
    subject          Nullable(String),
    kind             LowCardinality(String),
    severity         LowCardinality(String),
    source           LowCardinality(String),
    status           LowCardinality(String),
    nationality      LowCardinality(Nullable(String)),
    document_type    LowCardinality(Nullable(String)),
    document_country LowCardinality(Nullable(String)),
    document_series  Nullable(String),
    fraud_method     LowCardinality(Nullable(String)),
    conveyance_type  LowCardinality(Nullable(String)),
    conveyance_id    Nullable(String),
    description      String,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX subject_bf subject TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/yrdbus/alerts_local', '{replica}')
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (region, kind, occurred_at)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.alerts ON CLUSTER yrd AS yrdbus.alerts_local
ENGINE = Distributed(yrd, yrdbus, alerts_local, cityHash64(coalesce(subject, conveyance_id, toString(event_id))));
-- cases_current (0002) gives each case's current state.
-- distribute: cityHash64(case_id)
CREATE TABLE IF NOT EXISTS yrdbus.cases_local ON CLUSTER yrd
(
    event_id        UUID,
    region          LowCardinality(String),
    station_id      LowCardinality(String),
    port_code       LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    published_at    DateTime64(3, 'UTC'),
    case_id         String,
    stage           LowCardinality(String),
    case_type       LowCardinality(String),
    method          LowCardinality(String),
    subjects        Array(String),
    nationalities   Array(LowCardinality(String)),
    persons         Int32,
    conveyance_type LowCardinality(Nullable(String)),
    conveyance_id   Nullable(String),
    transferred_to  LowCardinality(Nullable(String)),
    description     String,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX subjects_bf subjects TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/yrdbus/cases_local', '{replica}')
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (case_id, occurred_at)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.cases ON CLUSTER yrd AS yrdbus.cases_local
ENGINE = Distributed(yrd, yrdbus, cases_local, cityHash64(case_id));
-- Derived alerts carry an id made from their rule and evidence: a replacing engine keeps one row per
-- alert even if the stream layer re-emits it after a restart (count with FINAL or uniqExact(alert_id)).
-- distribute: cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS yrdbus.derived_alerts_local ON CLUSTER yrd
(
    alert_id         String,
    kind             LowCardinality(String),
    severity         LowCardinality(String),
    rule_id          LowCardinality(String),
    rule_set_version LowCardinality(String),
    must_act         Array(LowCardinality(String)),
    inform           Array(LowCardinality(String)),
    station_id       LowCardinality(Nullable(String)),
    port_code        LowCardinality(Nullable(String)),
    subject          Nullable(String),
    conveyance_id    Nullable(String),
    pattern          Nullable(String),
    evidence         Array(String),
    occurred_at      DateTime64(3, 'UTC'),
    emitted_at       DateTime64(3, 'UTC'),
    summary          String,
    details          Map(String, String),
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX subject_bf subject TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/yrdbus/derived_alerts_local', '{replica}', emitted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (kind, occurred_at, alert_id)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.derived_alerts ON CLUSTER yrd AS yrdbus.derived_alerts_local
ENGINE = Distributed(yrd, yrdbus, derived_alerts_local, cityHash64(alert_id));
-- distribute: cityHash64(signal_id)
CREATE TABLE IF NOT EXISTS yrdbus.trends_local ON CLUSTER yrd
(
    signal_id        String,
    rule_id          LowCardinality(String),
    rule_set_version LowCardinality(String),
    metric           LowCardinality(String),
    region           LowCardinality(String),
    dimensions       Map(LowCardinality(String), String),
    window_start     DateTime64(3, 'UTC'),
    window_end       DateTime64(3, 'UTC'),
    observed         Float64,
    expected         Float64,
    score            Float64,
    rising           Bool,
    emitted_at       DateTime64(3, 'UTC'),
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/yrdbus/trends_local', '{replica}', emitted_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (region, metric, window_start, signal_id)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.trends ON CLUSTER yrd AS yrdbus.trends_local
ENGINE = Distributed(yrd, yrdbus, trends_local, cityHash64(signal_id));
-- One score per subject and event time; a re-emission of the same score replaces it.
-- distribute: cityHash64(subject)
CREATE TABLE IF NOT EXISTS yrdbus.risk_scores_local ON CLUSTER yrd
(
    subject_kind     LowCardinality(String),
    subject          String,
    score            Float64,
    level            LowCardinality(String),
    factors          Array(Tuple(name String, weight Float64, evidence String)),
    region           LowCardinality(Nullable(String)),
    rule_set_version LowCardinality(String),
    occurred_at      DateTime64(3, 'UTC'),
    emitted_at       DateTime64(3, 'UTC'),
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/yrdbus/risk_scores_local', '{replica}', emitted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (subject_kind, subject, occurred_at)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.risk_scores ON CLUSTER yrd AS yrdbus.risk_scores_local
ENGINE = Distributed(yrd, yrdbus, risk_scores_local, cityHash64(subject));
-- Records that broke the contract, with the original bytes and the reason (from the dlq.* topics).
-- `origin` names the original record (source topic/partition/offset) when the dead letter says it, else
-- the dead letter itself: a record dead-lettered twice (a replay after a crash) is kept once (FINAL).
-- distribute: cityHash64(origin)
CREATE TABLE IF NOT EXISTS yrdbus.dead_letters_local ON CLUSTER yrd
(
    received_at      DateTime64(3, 'UTC'),
    topic            LowCardinality(String),
    partition        UInt32,
    offset           UInt64,
    source_topic     LowCardinality(String),
    source_partition Nullable(UInt32),
    source_offset    Nullable(UInt64),
    origin           String,
    reason           LowCardinality(String),
    field            String,
    error            String,
    key              String,
    value            String,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/yrdbus/dead_letters_local', '{replica}', ingested_at)
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, origin)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.dead_letters ON CLUSTER yrd AS yrdbus.dead_letters_local
ENGINE = Distributed(yrd, yrdbus, dead_letters_local, cityHash64(origin));

-- migration 0002 aggregates
-- Aggregates kept up to date by materialized views as the sink inserts, and each case's current state.
-- Crossings per port, hour, direction and nationality group (mainland, HK/Macao/Taiwan, foreign):
-- the ports-and-flow dashboards and the flow-against-baseline query read this, never the raw rows.
-- distribute: cityHash64(port_code)
CREATE TABLE IF NOT EXISTS yrdbus.flow_hourly_local ON CLUSTER yrd
(
    hour              DateTime('UTC'),
    region            LowCardinality(String),
    port_code         LowCardinality(String),
    direction         LowCardinality(String),
    nationality_group LowCardinality(String),
    crossings         UInt64,
    refused           UInt64
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/yrdbus/flow_hourly_local', '{replica}', (crossings, refused))
PARTITION BY toYYYYMM(hour)
ORDER BY (region, port_code, hour, direction, nationality_group)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.flow_hourly ON CLUSTER yrd AS yrdbus.flow_hourly_local
ENGINE = Distributed(yrd, yrdbus, flow_hourly_local, cityHash64(port_code));
CREATE MATERIALIZED VIEW IF NOT EXISTS yrdbus.flow_hourly_mv ON CLUSTER yrd TO yrdbus.flow_hourly_local AS
SELECT
    toStartOfHour(occurred_at) AS hour,
    region,
    port_code,
    direction,
    multiIf(nationality = 'CHN', 'MAINLAND',
            nationality IN ('HKG', 'MAC', 'TWN'), 'HK_MACAO_TAIWAN',
            'FOREIGN') AS nationality_group,
    count() AS crossings,
    countIf(decision = 'REFUSED') AS refused
FROM yrdbus.clearances_local
GROUP BY hour, region, port_code, direction, nationality_group;
-- Case events per day, region, stage, type, method and nationality (a case with people of two
-- nationalities counts once under each; one with none under UNKNOWN).
-- distribute: cityHash64(day, region)
CREATE TABLE IF NOT EXISTS yrdbus.cases_daily_local ON CLUSTER yrd
(
    day         Date,
    region      LowCardinality(String),
    stage       LowCardinality(String),
    case_type   LowCardinality(String),
    method      LowCardinality(String),
    nationality LowCardinality(String),
    events      UInt64,
    persons     Int64
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/yrdbus/cases_daily_local', '{replica}', (events, persons))
PARTITION BY toYYYYMM(day)
ORDER BY (day, region, stage, case_type, method, nationality)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.cases_daily ON CLUSTER yrd AS yrdbus.cases_daily_local
ENGINE = Distributed(yrd, yrdbus, cases_daily_local, cityHash64(day, region));
CREATE MATERIALIZED VIEW IF NOT EXISTS yrdbus.cases_daily_mv ON CLUSTER yrd TO yrdbus.cases_daily_local AS
SELECT
    toDate(occurred_at) AS day,
    region,
    stage,
    case_type,
    method,
    nationality,
    count() AS events,
    sum(persons) AS persons
FROM yrdbus.cases_local
ARRAY JOIN if(empty(nationalities), ['UNKNOWN'], nationalities) AS nationality
GROUP BY day, region, stage, case_type, method, nationality;
-- The current state of every case: its latest stage and facts, when it opened and last moved.
-- Ties in event time are broken by the lifecycle order of the stage.
CREATE VIEW IF NOT EXISTS yrdbus.cases_current ON CLUSTER yrd AS
SELECT
    case_id,
    argMax(e_region, k) AS region,
    argMax(e_stage, k) AS stage,
    argMax(e_case_type, k) AS case_type,
    argMax(e_method, k) AS method,
    argMin(e_region, k) AS opened_region,
    min(e_occurred_at) AS opened_at,
    max(e_occurred_at) AS last_event_at,
    argMax(e_stage, k) = 'CLOSED' AS closed,
    argMaxIf(e_transferred_to, k, e_transferred_to IS NOT NULL) AS transferred_to,
    groupUniqArrayArray(e_subjects) AS subjects,
    groupUniqArrayArray(e_nationalities) AS nationalities,
    max(e_persons) AS persons,
    count() AS events
FROM
(
    SELECT
        case_id, region AS e_region, stage AS e_stage, case_type AS e_case_type, method AS e_method,
        occurred_at AS e_occurred_at, transferred_to AS e_transferred_to, subjects AS e_subjects,
        nationalities AS e_nationalities, persons AS e_persons,
        (occurred_at, indexOf(['OPENED', 'UPDATED', 'TRANSFERRED', 'DETAINED', 'REPATRIATED', 'CLOSED'], stage)) AS k
    FROM yrdbus.cases
)
GROUP BY case_id;

-- migration 0003 reference
-- Reference data (schemas/reference/*.json), reloaded by every `yrdbus db migrate`, and the
-- dictionaries the queries use to name regions, stations and ports (dictGet('yrdbus.ports', ...)).
-- The dictionaries read tables of the same database, so they need no host, user or password.
-- everywhere
CREATE TABLE IF NOT EXISTS yrdbus.ref_regions ON CLUSTER yrd
(
    code               String,
    name               String,
    name_zh            String,
    agency             String,
    neighbours         Array(String),
    share_of_crossings Float64,
    transit_144h       Bool
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/yrdbus/ref_regions', '{replica}')
ORDER BY code;
-- everywhere
CREATE TABLE IF NOT EXISTS yrdbus.ref_stations ON CLUSTER yrd
(
    station_id String,
    region     String,
    name       String,
    ports      Array(String)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/yrdbus/ref_stations', '{replica}')
ORDER BY station_id;
-- everywhere
CREATE TABLE IF NOT EXISTS yrdbus.ref_ports ON CLUSTER yrd
(
    code            String,
    code_system     String,
    name            String,
    name_zh         String,
    region          String,
    kind            String,
    station_id      String,
    share_of_region Float64,
    transit_144h    Bool
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/yrdbus/ref_ports', '{replica}')
ORDER BY code;
-- everywhere
CREATE TABLE IF NOT EXISTS yrdbus.ref_countries ON CLUSTER yrd
(
    alpha3 String,
    alpha2 String,
    name   String
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/yrdbus/ref_countries', '{replica}')
ORDER BY alpha3;
CREATE DICTIONARY IF NOT EXISTS yrdbus.regions ON CLUSTER yrd
(
    code               String,
    name               String,
    name_zh            String,
    agency             String,
    neighbours         Array(String),
    share_of_crossings Float64,
    transit_144h       UInt8
)
PRIMARY KEY code
SOURCE(CLICKHOUSE(DB 'yrdbus' TABLE 'ref_regions'))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 0 MAX 3600);
CREATE DICTIONARY IF NOT EXISTS yrdbus.stations ON CLUSTER yrd
(
    station_id String,
    region     String,
    name       String,
    ports      Array(String)
)
PRIMARY KEY station_id
SOURCE(CLICKHOUSE(DB 'yrdbus' TABLE 'ref_stations'))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 0 MAX 3600);
CREATE DICTIONARY IF NOT EXISTS yrdbus.ports ON CLUSTER yrd
(
    code            String,
    code_system     String,
    name            String,
    name_zh         String,
    region          String,
    kind            String,
    station_id      String,
    share_of_region Float64,
    transit_144h    UInt8
)
PRIMARY KEY code
SOURCE(CLICKHOUSE(DB 'yrdbus' TABLE 'ref_ports'))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 0 MAX 3600);

-- migration 0004 sink
-- The sink's batch log. Before a batch is inserted, the sink writes which offsets of which partitions
-- it holds and the deduplication token it will insert them with. After a crash, a batch that may have
-- been inserted is rebuilt from exactly those offsets and inserted again with the same token, so
-- ClickHouse drops it if it was already in (see connectors/sink.py).
-- everywhere
CREATE TABLE IF NOT EXISTS yrdbus.sink_batches ON CLUSTER yrd
(
    consumer_group LowCardinality(String),
    topic          LowCardinality(String),
    partition      UInt32,
    first_offset   UInt64,
    last_offset    UInt64,
    token          String,
    target         LowCardinality(String),
    rows           UInt32,
    written_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/yrdbus/sink_batches', '{replica}')
ORDER BY (consumer_group, topic, partition, last_offset)
TTL toDateTime(written_at) + INTERVAL 14 DAY;

-- migration 0005 flow_baseline
-- Expected crossings per hour of the whole region, by port kind, UTC hour and UTC weekday (Monday = 0),
-- from schemas/reference/flow_profile.json: annual_crossings / 8760 x hour_of_day[kind][h] x day_of_week[d].
-- A port's baseline is this x its region's share_of_crossings x its share_of_region (the dictionaries).
-- everywhere
CREATE TABLE IF NOT EXISTS yrdbus.ref_flow_baseline ON CLUSTER yrd
(
    kind               LowCardinality(String),
    hour               UInt8,
    weekday            UInt8,
    crossings_per_hour Float64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/yrdbus/ref_flow_baseline', '{replica}')
ORDER BY (kind, weekday, hour);

-- migration 0006 subject_events
-- A subject's history in one table: every clearance, station alert, case event (once per subject of the
-- case) and derived alert of a subject token, filled by materialized views as the sink inserts, so that
-- "where else has this traveller been seen" is one SELECT on one sorting key. The four event tables keep
-- their monthly partitions and the sorting keys of their own questions; this one is partitioned by year,
-- so a subject's history opens one part a year instead of one a month in each of four tables (the
-- subject_history query, docs/benchmarks.md).
-- version: emitted_at of a derived alert (a re-emission replaces the row, as in derived_alerts), the event
-- time otherwise (events do not change); read with FINAL. The views name a column by its table (a.kind)
-- where an alias of the same name (kind) would shadow it.
-- A replayed insert of the sink is dropped with its views' blocks (deduplicate_blocks_in_dependent_
-- materialized_views), as for flow_hourly and cases_daily.
-- backfill: each view also copies the rows stored before this migration. A row inserted between a view's
-- creation and its copy is written twice with the same key and version: FINAL and merges keep one.
-- distribute: cityHash64(subject)
CREATE TABLE IF NOT EXISTS yrdbus.subject_events_local ON CLUSTER yrd
(
    subject     String,
    occurred_at DateTime64(3, 'UTC'),
    kind        LowCardinality(String),
    region      LowCardinality(String),
    port_code   LowCardinality(String),
    what        LowCardinality(String),
    detail      String,
    id          String,
    version     DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/yrdbus/subject_events_local', '{replica}', version)
PARTITION BY toYear(occurred_at)
ORDER BY (subject, occurred_at, kind, id)
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.subject_events ON CLUSTER yrd AS yrdbus.subject_events_local
ENGINE = Distributed(yrd, yrdbus, subject_events_local, cityHash64(subject));
-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS yrdbus.subject_events_clearances_mv ON CLUSTER yrd TO yrdbus.subject_events_local AS
SELECT subject, occurred_at, 'clearance' AS kind, region, port_code, direction AS what,
       concat(decision, ' ', nationality, ' ', conveyance_id) AS detail, toString(event_id) AS id,
       occurred_at AS version
FROM yrdbus.clearances_local;
INSERT INTO yrdbus.subject_events
SELECT subject, occurred_at, 'clearance' AS kind, region, port_code, direction AS what,
       concat(decision, ' ', nationality, ' ', conveyance_id) AS detail, toString(event_id) AS id,
       occurred_at AS version
FROM yrdbus.clearances;
-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS yrdbus.subject_events_alerts_mv ON CLUSTER yrd TO yrdbus.subject_events_local AS
SELECT assumeNotNull(subject) AS subject, occurred_at, 'alert' AS kind, region, port_code, a.kind AS what,
       concat(severity, ' ', status) AS detail, toString(event_id) AS id, occurred_at AS version
FROM yrdbus.alerts_local AS a
WHERE subject IS NOT NULL;
INSERT INTO yrdbus.subject_events
SELECT assumeNotNull(subject) AS subject, occurred_at, 'alert' AS kind, region, port_code, a.kind AS what,
       concat(severity, ' ', status) AS detail, toString(event_id) AS id, occurred_at AS version
FROM yrdbus.alerts AS a
WHERE subject IS NOT NULL;
-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS yrdbus.subject_events_cases_mv ON CLUSTER yrd TO yrdbus.subject_events_local AS
SELECT subject, occurred_at, 'case' AS kind, region, port_code, stage AS what,
       concat(case_type, '/', method, ' ', case_id) AS detail, toString(event_id) AS id, occurred_at AS version
FROM yrdbus.cases_local
ARRAY JOIN arrayDistinct(subjects) AS subject;
INSERT INTO yrdbus.subject_events
SELECT subject, occurred_at, 'case' AS kind, region, port_code, stage AS what,
       concat(case_type, '/', method, ' ', case_id) AS detail, toString(event_id) AS id, occurred_at AS version
FROM yrdbus.cases
ARRAY JOIN arrayDistinct(subjects) AS subject;
-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS yrdbus.subject_events_derived_alerts_mv ON CLUSTER yrd TO yrdbus.subject_events_local AS
SELECT assumeNotNull(subject) AS subject, occurred_at, 'derived_alert' AS kind,
       arrayStringConcat(must_act, ',') AS region, ifNull(toString(d.port_code), '') AS port_code, d.kind AS what,
       summary AS detail, alert_id AS id, emitted_at AS version
FROM yrdbus.derived_alerts_local AS d
WHERE subject IS NOT NULL;
INSERT INTO yrdbus.subject_events
SELECT assumeNotNull(subject) AS subject, occurred_at, 'derived_alert' AS kind,
       arrayStringConcat(must_act, ',') AS region, ifNull(toString(d.port_code), '') AS port_code, d.kind AS what,
       summary AS detail, alert_id AS id, emitted_at AS version
FROM yrdbus.derived_alerts AS d
WHERE subject IS NOT NULL;

-- migration 0007 alert_status
-- A derived alert can be withdrawn: the stream layer sends a new version of it (same alert_id, a later
-- emitted_at) with status WITHDRAWN and the reason (DerivedAlert v2). The table is a ReplacingMergeTree
-- versioned by emitted_at, so the newest version stands: read with FINAL (or argMax(..., emitted_at)).
-- Rows stored before (and records of DerivedAlert v1) have no status: RAISED.
-- On a cluster the Distributed table needs the columns too; on one node the second ALTER is the same table
-- (IF NOT EXISTS: nothing to do).
ALTER TABLE yrdbus.derived_alerts_local ON CLUSTER yrd
    ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'RAISED' AFTER details,
    ADD COLUMN IF NOT EXISTS status_reason Nullable(String) AFTER status;
ALTER TABLE yrdbus.derived_alerts ON CLUSTER yrd
    ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'RAISED' AFTER details,
    ADD COLUMN IF NOT EXISTS status_reason Nullable(String) AFTER status;
-- subject_events copies derived alerts with a subject, versioned by emitted_at as well: the withdrawing
-- version replaces the raised row there too, and its detail says it was withdrawn and why (a subject's
-- history must not show a disproved alert as standing). No backfill: no row stored before has a status.
ALTER TABLE yrdbus.subject_events_derived_alerts_mv ON CLUSTER yrd MODIFY QUERY
SELECT assumeNotNull(subject) AS subject, occurred_at, 'derived_alert' AS kind,
       arrayStringConcat(must_act, ',') AS region, ifNull(toString(d.port_code), '') AS port_code, d.kind AS what,
       if(d.status = 'WITHDRAWN', concat('WITHDRAWN (', ifNull(d.status_reason, ''), '): ', summary), summary) AS detail,
       alert_id AS id, emitted_at AS version
FROM yrdbus.derived_alerts_local AS d
WHERE subject IS NOT NULL;

-- migration 0008 dispositions
-- Officers' dispositions of derived alerts (AlertDisposition, topic dispositions): acknowledged, then
-- settled as confirmed, false alarm or no action, one row per alert, region and step. A disposition recorded
-- twice has the same disposition_id: the ReplacingMergeTree keeps one (read with FINAL).
-- distribute: cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS yrdbus.dispositions_local ON CLUSTER yrd
(
    disposition_id UUID,
    alert_id       String,
    outcome        LowCardinality(String),
    region         LowCardinality(Nullable(String)),
    officer        LowCardinality(String),
    note           String,
    must_act       Array(LowCardinality(String)),
    inform         Array(LowCardinality(String)),
    kind           LowCardinality(String),
    severity       LowCardinality(String),
    decided_at     DateTime64(3, 'UTC'),
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/yrdbus/dispositions_local', '{replica}', decided_at)
PARTITION BY toYYYYMM(decided_at)
ORDER BY (alert_id, disposition_id)
SETTINGS non_replicated_deduplication_window = 10000;
CREATE TABLE IF NOT EXISTS yrdbus.dispositions ON CLUSTER yrd AS yrdbus.dispositions_local
ENGINE = Distributed(yrd, yrdbus, dispositions_local, cityHash64(alert_id));
