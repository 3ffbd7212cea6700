-- title: A subject's history across all regions
-- description: Every clearance, station alert, case event and derived alert of one subject token, in
--   every region, oldest first (the paper's "where else has this traveller been seen"). Reads
--   subject_events, which the four event tables fill as they are written (migration 0006). Each derived
--   alert (its detail says whether it was withdrawn, and why) is followed by each officer's disposition
--   (acknowledged, confirmed, false alarm, no action: region, officer, when in UTC, note); its escalation,
--   when nobody answered in time, is an ESCALATION derived alert of the same subject, at the alert's time.
-- param subject String: the subject token (HMAC of the document), as on the bus
-- param since DateTime64(3) = 1970-01-01 00:00:00: from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: up to this event time (UTC, exclusive)
SELECT occurred_at, kind, region, port_code, what, detail, id
FROM
(
    SELECT occurred_at, toString(kind) AS kind, toString(region) AS region, toString(port_code) AS port_code,
           toString(what) AS what, detail, id, toDateTime64(0, 3, 'UTC') AS step_at
    FROM subject_events FINAL
    WHERE subject = {subject:String} AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}

    UNION ALL

    SELECT a.occurred_at AS occurred_at, 'derived_alert.disposition' AS kind, ifNull(toString(d.region), 'RCC') AS region,
           a.port_code AS port_code, toString(d.outcome) AS what,
           concat(toString(d.officer), ' ', formatDateTime(d.decided_at, '%Y-%m-%d %H:%i:%S', 'UTC'), ' UTC',
                  if(d.note = '', '', concat(': ', d.note))) AS detail,
           a.alert_id AS id, d.decided_at AS step_at
    FROM
    (
        SELECT alert_id, occurred_at, ifNull(toString(port_code), '') AS port_code
        FROM derived_alerts FINAL
        WHERE subject = {subject:String} AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
    ) AS a
    INNER JOIN (SELECT * FROM dispositions FINAL) AS d ON d.alert_id = a.alert_id
)
ORDER BY occurred_at, kind, id, step_at, what
