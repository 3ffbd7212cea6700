-- A derived alert can be withdrawn: the stream layer sends a new version of it (same alert_id, a later
-- emitted_at) with status WITHDRAWN and the reason (DerivedAlert v2). The table is a ReplacingMergeTree
-- versioned by emitted_at, so the newest version stands: read with FINAL (or argMax(..., emitted_at)).
-- Rows stored before (and records of DerivedAlert v1) have no status: RAISED.
-- On a cluster the Distributed table needs the columns too; on one node the second ALTER is the same table
-- (IF NOT EXISTS: nothing to do).
ALTER TABLE {{table:derived_alerts}} {{on_cluster}}
    ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'RAISED' AFTER details,
    ADD COLUMN IF NOT EXISTS status_reason Nullable(String) AFTER status;

ALTER TABLE {{db}}.derived_alerts {{on_cluster}}
    ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'RAISED' AFTER details,
    ADD COLUMN IF NOT EXISTS status_reason Nullable(String) AFTER status;

-- subject_events copies derived alerts with a subject, versioned by emitted_at as well: the withdrawing
-- version replaces the raised row there too, and its detail says it was withdrawn and why (a subject's
-- history must not show a disproved alert as standing). No backfill: no row stored before has a status.
ALTER TABLE {{db}}.subject_events_derived_alerts_mv {{on_cluster}} MODIFY QUERY
SELECT assumeNotNull(subject) AS subject, occurred_at, 'derived_alert' AS kind,
       arrayStringConcat(must_act, ',') AS region, ifNull(toString(d.port_code), '') AS port_code, d.kind AS what,
       if(d.status = 'WITHDRAWN', concat('WITHDRAWN (', ifNull(d.status_reason, ''), '): ', summary), summary) AS detail,
       alert_id AS id, emitted_at AS version
FROM {{table:derived_alerts}} AS d
WHERE subject IS NOT NULL;
