-- Officers' dispositions of derived alerts (AlertDisposition, topic dispositions): acknowledged, then
-- settled as confirmed, false alarm or no action, one row per alert, region and step. A disposition recorded
-- twice has the same disposition_id: the ReplacingMergeTree keeps one (read with FINAL).
-- distribute: cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS {{table:dispositions}} {{on_cluster}}
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
ENGINE = {{engine:ReplacingMergeTree(decided_at)}}
PARTITION BY toYYYYMM(decided_at)
ORDER BY (alert_id, disposition_id)
{{ttl:decided_at}}
SETTINGS non_replicated_deduplication_window = 10000;
