-- title: How fast each region answers the alerts it must act on
-- description: Per region, the standing derived alerts of the period it must act on, how many its
--   officers acknowledged, the minutes from the alert's emission to the acknowledgement (median and 90th
--   percentile, over the acknowledged ones), and how many the region has not settled yet.
-- param since DateTime64(3) = 1970-01-01 00:00:00: alerts from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: alerts before this event time (UTC)
SELECT
    a.region AS region,
    count() AS must_act,
    countIf(d.acknowledged) AS acknowledged,
    round(quantileIf(0.5)(dateDiff('millisecond', a.emitted_at, d.acknowledged_at) / 60000, d.acknowledged), 1)
        AS p50_minutes_to_acknowledge,
    round(quantileIf(0.9)(dateDiff('millisecond', a.emitted_at, d.acknowledged_at) / 60000, d.acknowledged), 1)
        AS p90_minutes_to_acknowledge,
    countIf(NOT d.settled) AS open
FROM
(
    SELECT alert_id, toString(region) AS region, emitted_at
    FROM derived_alerts FINAL
    ARRAY JOIN must_act AS region
    WHERE status != 'WITHDRAWN' AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
) AS a
LEFT JOIN
(
    SELECT alert_id, toString(assumeNotNull(region)) AS region,
           countIf(outcome = 'ACKNOWLEDGED') > 0 AS acknowledged,
           minIf(decided_at, outcome = 'ACKNOWLEDGED') AS acknowledged_at,
           countIf(outcome != 'ACKNOWLEDGED') > 0 AS settled
    FROM dispositions FINAL
    WHERE region IS NOT NULL
    GROUP BY alert_id, region
) AS d ON a.alert_id = d.alert_id AND a.region = d.region
GROUP BY region
ORDER BY region
