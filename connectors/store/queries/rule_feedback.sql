-- title: The rules in practice: what officers said of their alerts
-- description: Per rule and rule-set version, the derived alerts raised in the period (standing: not
--   withdrawn) and what the officers of the regions said of them (dispositions): acknowledged, confirmed,
--   false alarm, no action (an alert counts once for each outcome any region gave it), not yet settled by
--   anyone, and precision in practice: confirmed / (confirmed + false alarms).
-- param since DateTime64(3) = 1970-01-01 00:00:00: alerts from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: alerts before this event time (UTC)
SELECT
    a.rule_id AS rule_id,
    a.rule_set_version AS rule_set_version,
    count() AS raised,
    countIf(has(d.outcomes, 'ACKNOWLEDGED')) AS acknowledged,
    countIf(has(d.outcomes, 'CONFIRMED')) AS confirmed,
    countIf(has(d.outcomes, 'FALSE_ALARM')) AS false_alarms,
    countIf(has(d.outcomes, 'NO_ACTION')) AS no_action,
    countIf(NOT hasAny(d.outcomes, ['CONFIRMED', 'FALSE_ALARM', 'NO_ACTION'])) AS unsettled,
    round(confirmed / nullIf(confirmed + false_alarms, 0), 3) AS precision_in_practice
FROM
(
    SELECT alert_id, toString(rule_id) AS rule_id, toString(rule_set_version) AS rule_set_version
    FROM derived_alerts FINAL
    WHERE status != 'WITHDRAWN' AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
) AS a
LEFT JOIN
(
    SELECT alert_id, groupUniqArray(toString(outcome)) AS outcomes
    FROM dispositions FINAL
    GROUP BY alert_id
) AS d ON a.alert_id = d.alert_id
GROUP BY rule_id, rule_set_version
ORDER BY raised DESC, rule_id, rule_set_version
