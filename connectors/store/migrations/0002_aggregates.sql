-- Aggregates kept up to date by materialized views as the sink inserts, and each case's current state.

-- Crossings per port, hour, direction and nationality group (mainland, HK/Macao/Taiwan, foreign):
-- the ports-and-flow dashboards and the flow-against-baseline query read this, never the raw rows.
-- distribute: cityHash64(port_code)
CREATE TABLE IF NOT EXISTS {{table:flow_hourly}} {{on_cluster}}
(
    hour              DateTime('UTC'),
    region            LowCardinality(String),
    port_code         LowCardinality(String),
    direction         LowCardinality(String),
    nationality_group LowCardinality(String),
    crossings         UInt64,
    refused           UInt64
)
ENGINE = {{engine:SummingMergeTree((crossings, refused))}}
PARTITION BY toYYYYMM(hour)
ORDER BY (region, port_code, hour, direction, nationality_group)
{{ttl:hour}}
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.flow_hourly_mv {{on_cluster}} TO {{table:flow_hourly}} AS
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
FROM {{table:clearances}}
GROUP BY hour, region, port_code, direction, nationality_group;

-- Case events per day, region, stage, type, method and nationality (a case with people of two
-- nationalities counts once under each; one with none under UNKNOWN).
-- distribute: cityHash64(day, region)
CREATE TABLE IF NOT EXISTS {{table:cases_daily}} {{on_cluster}}
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
ENGINE = {{engine:SummingMergeTree((events, persons))}}
PARTITION BY toYYYYMM(day)
ORDER BY (day, region, stage, case_type, method, nationality)
{{ttl:day}}
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.cases_daily_mv {{on_cluster}} TO {{table:cases_daily}} AS
SELECT
    toDate(occurred_at) AS day,
    region,
    stage,
    case_type,
    method,
    nationality,
    count() AS events,
    sum(persons) AS persons
FROM {{table:cases}}
ARRAY JOIN if(empty(nationalities), ['UNKNOWN'], nationalities) AS nationality
GROUP BY day, region, stage, case_type, method, nationality;

-- The current state of every case: its latest stage and facts, when it opened and last moved.
-- Ties in event time are broken by the lifecycle order of the stage.
CREATE VIEW IF NOT EXISTS {{db}}.cases_current {{on_cluster}} AS
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
    FROM {{db}}.cases
)
GROUP BY case_id;
