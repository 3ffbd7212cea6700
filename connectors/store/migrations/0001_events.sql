-- Raw events of every kind, as published by the stations and derived by the stream layer.
-- Sorting keys follow the analysts' questions: a subject's history (clearances, risk scores),
-- a region, kind and time (alerts), a case's lifecycle (cases), a kind over time (derived alerts).
-- Monthly partitions on event time; TTL from YRDBUS_CLICKHOUSE_TTL_DAYS (0: keep for ever).
-- non_replicated_deduplication_window makes insert_deduplication_token work on a single node
-- (replicated tables deduplicate through Keeper instead): the sink's replay after a crash is a no-op.
-- clearances: small granules (256 rows) so that a subject lookup reads little in each monthly part.

-- distribute: cityHash64(subject)
CREATE TABLE IF NOT EXISTS {{table:clearances}} {{on_cluster}}
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
ENGINE = {{engine:MergeTree}}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (subject, occurred_at)
{{ttl:occurred_at}}
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;

-- distribute: cityHash64(coalesce(subject, conveyance_id, toString(event_id)))
CREATE TABLE IF NOT EXISTS {{table:alerts}} {{on_cluster}}
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
ENGINE = {{engine:MergeTree}}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (region, kind, occurred_at)
{{ttl:occurred_at}}
SETTINGS non_replicated_deduplication_window = 10000;

-- Every lifecycle event of a case (opened, updated, transferred, detained, repatriated, closed);
-- cases_current (0002) gives each case's current state.
-- distribute: cityHash64(case_id)
CREATE TABLE IF NOT EXISTS {{table:cases}} {{on_cluster}}
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
ENGINE = {{engine:MergeTree}}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (case_id, occurred_at)
{{ttl:occurred_at}}
SETTINGS non_replicated_deduplication_window = 10000;

-- Derived alerts carry an id made from their rule and evidence: a replacing engine keeps one row per
-- alert even if the stream layer re-emits it after a restart (count with FINAL or uniqExact(alert_id)).
-- distribute: cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS {{table:derived_alerts}} {{on_cluster}}
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
ENGINE = {{engine:ReplacingMergeTree(emitted_at)}}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (kind, occurred_at, alert_id)
{{ttl:occurred_at}}
SETTINGS non_replicated_deduplication_window = 10000;

-- distribute: cityHash64(signal_id)
CREATE TABLE IF NOT EXISTS {{table:trends}} {{on_cluster}}
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
ENGINE = {{engine:ReplacingMergeTree(emitted_at)}}
PARTITION BY toYYYYMM(window_start)
ORDER BY (region, metric, window_start, signal_id)
{{ttl:window_start}}
SETTINGS non_replicated_deduplication_window = 10000;

-- One score per subject and event time; a re-emission of the same score replaces it.
-- distribute: cityHash64(subject)
CREATE TABLE IF NOT EXISTS {{table:risk_scores}} {{on_cluster}}
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
ENGINE = {{engine:ReplacingMergeTree(emitted_at)}}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (subject_kind, subject, occurred_at)
{{ttl:occurred_at}}
SETTINGS non_replicated_deduplication_window = 10000;

-- Records that broke the contract, with the original bytes and the reason (from the dlq.* topics).
-- `origin` names the original record (source topic/partition/offset) when the dead letter says it, else
-- the dead letter itself: a record dead-lettered twice (a replay after a crash) is kept once (FINAL).
-- distribute: cityHash64(origin)
CREATE TABLE IF NOT EXISTS {{table:dead_letters}} {{on_cluster}}
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
ENGINE = {{engine:ReplacingMergeTree(ingested_at)}}
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, origin)
{{ttl:received_at}}
SETTINGS non_replicated_deduplication_window = 10000;
