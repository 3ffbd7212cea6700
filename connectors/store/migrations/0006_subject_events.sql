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
CREATE TABLE IF NOT EXISTS {{table:subject_events}} {{on_cluster}}
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
ENGINE = {{engine:ReplacingMergeTree(version)}}
PARTITION BY toYear(occurred_at)
ORDER BY (subject, occurred_at, kind, id)
{{ttl:occurred_at}}
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;

-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.subject_events_clearances_mv {{on_cluster}} TO {{table:subject_events}} AS
SELECT subject, occurred_at, 'clearance' AS kind, region, port_code, direction AS what,
       concat(decision, ' ', nationality, ' ', conveyance_id) AS detail, toString(event_id) AS id,
       occurred_at AS version
FROM {{table:clearances}};

-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.subject_events_alerts_mv {{on_cluster}} TO {{table:subject_events}} AS
SELECT assumeNotNull(subject) AS subject, occurred_at, 'alert' AS kind, region, port_code, a.kind AS what,
       concat(severity, ' ', status) AS detail, toString(event_id) AS id, occurred_at AS version
FROM {{table:alerts}} AS a
WHERE subject IS NOT NULL;

-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.subject_events_cases_mv {{on_cluster}} TO {{table:subject_events}} AS
SELECT subject, occurred_at, 'case' AS kind, region, port_code, stage AS what,
       concat(case_type, '/', method, ' ', case_id) AS detail, toString(event_id) AS id, occurred_at AS version
FROM {{table:cases}}
ARRAY JOIN arrayDistinct(subjects) AS subject;

-- backfill
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.subject_events_derived_alerts_mv {{on_cluster}} TO {{table:subject_events}} AS
SELECT assumeNotNull(subject) AS subject, occurred_at, 'derived_alert' AS kind,
       arrayStringConcat(must_act, ',') AS region, ifNull(toString(d.port_code), '') AS port_code, d.kind AS what,
       summary AS detail, alert_id AS id, emitted_at AS version
FROM {{table:derived_alerts}} AS d
WHERE subject IS NOT NULL;
