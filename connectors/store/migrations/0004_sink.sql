-- The sink's batch log. Before a batch is inserted, the sink writes which offsets of which partitions
-- it holds and the deduplication token it will insert them with. After a crash, a batch that may have
-- been inserted is rebuilt from exactly those offsets and inserted again with the same token, so
-- ClickHouse drops it if it was already in (see connectors/sink.py).
-- everywhere
CREATE TABLE IF NOT EXISTS {{table:sink_batches}} {{on_cluster}}
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
ENGINE = {{engine:MergeTree}}
ORDER BY (consumer_group, topic, partition, last_offset)
TTL toDateTime(written_at) + INTERVAL 14 DAY;
