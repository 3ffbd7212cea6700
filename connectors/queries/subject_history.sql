-- title: A subject's history across all regions
-- description: Every clearance, station alert, case event and derived alert of one subject token, in
--   every region, oldest first (the paper's "where else has this traveller been seen").
-- param subject String: the subject token (HMAC of the document), as on the bus
-- param since DateTime64(3) = 1970-01-01 00:00:00: from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: up to this event time (UTC, exclusive)
SELECT occurred_at, kind, region, port_code, what, detail, id
FROM
(
    SELECT occurred_at, 'clearance' AS kind, toString(region) AS region, toString(port_code) AS port_code,
           toString(direction) AS what, concat(decision, ' ', nationality, ' ', conveyance_id) AS detail,
           toString(event_id) AS id
    FROM clearances
    WHERE subject = {subject:String} AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
    UNION ALL
    SELECT occurred_at, 'alert', toString(region), toString(port_code), toString(kind),
           concat(severity, ' ', status), toString(event_id)
    FROM alerts
    WHERE subject = {subject:String} AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
    UNION ALL
    SELECT occurred_at, 'case', toString(region), toString(port_code), toString(stage),
           concat(case_type, '/', method, ' ', case_id), toString(event_id)
    FROM cases
    WHERE has(subjects, {subject:String}) AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
    UNION ALL
    SELECT occurred_at, 'derived_alert', arrayStringConcat(must_act, ','), ifNull(toString(port_code), ''),
           toString(kind), summary, alert_id
    FROM derived_alerts FINAL
    WHERE subject = {subject:String} AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
)
ORDER BY occurred_at, kind, id
