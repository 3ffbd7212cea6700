-- title: Alert handling summary by region
-- description: Station alerts per region by their current status (an alert's status updates are
--   republished with the same event_id; the latest published wins), how many were high or critical,
--   the median minutes from the alert to its resolution or dismissal, and the derived alerts the
--   region had to act on in the same period: those standing (the last version of each alert id not
--   withdrawn), and those withdrawn because events read later disproved them.
-- param since DateTime64(3) = 1970-01-01 00:00:00: alerts from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: alerts before this event time (UTC)
SELECT
    r.region AS region,
    ifNull(a.alerts, 0) AS alerts,
    ifNull(a.raised, 0) AS raised,
    ifNull(a.acknowledged, 0) AS acknowledged,
    ifNull(a.resolved, 0) AS resolved,
    ifNull(a.dismissed, 0) AS dismissed,
    ifNull(a.high_or_critical, 0) AS high_or_critical,
    a.median_minutes_to_close AS median_minutes_to_close,
    ifNull(d.derived_must_act, 0) AS derived_must_act,
    ifNull(d.derived_withdrawn, 0) AS derived_withdrawn
FROM (SELECT code AS region FROM ref_regions FINAL) AS r
LEFT JOIN
(
    SELECT
        region,
        count() AS alerts,
        countIf(status = 'RAISED') AS raised,
        countIf(status = 'ACKNOWLEDGED') AS acknowledged,
        countIf(status = 'RESOLVED') AS resolved,
        countIf(status = 'DISMISSED') AS dismissed,
        countIf(severity IN ('HIGH', 'CRITICAL')) AS high_or_critical,
        if(resolved + dismissed = 0, NULL,
           round(quantileExactIf(0.5)(dateDiff('second', alert_at, last_published) / 60,
                                      status IN ('RESOLVED', 'DISMISSED')), 1)) AS median_minutes_to_close
    FROM
    (
        SELECT event_id, toString(any(region)) AS region, min(occurred_at) AS alert_at,
               toString(argMax(severity, published_at)) AS severity, toString(argMax(status, published_at)) AS status,
               max(published_at) AS last_published
        FROM alerts
        WHERE occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
        GROUP BY event_id
    )
    GROUP BY region
) AS a ON a.region = r.region
LEFT JOIN
(
    SELECT toString(region) AS region, countIf(status != 'WITHDRAWN') AS derived_must_act,
           countIf(status = 'WITHDRAWN') AS derived_withdrawn
    FROM derived_alerts FINAL
    ARRAY JOIN must_act AS region
    WHERE occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
    GROUP BY region
) AS d ON d.region = r.region
ORDER BY region
SETTINGS join_use_nulls = 1
