-- title: Events uploaded late
-- description: Clearances, station alerts and case events whose station published them long after they
--   happened (published_at minus occurred_at at least min_delay_hours), longest delay first, with the
--   time the store received them (ingested_at). A station alert counts by its first publication. An event this late can disprove a derived alert already raised
--   (a flag resolved before the crossing that raised a hit): the stream layer then withdraws the alert.
-- param since DateTime64(3) = 1970-01-01 00:00:00: events from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: events before this event time (UTC)
-- param min_delay_hours UInt32 = 48: how long after the event its upload counts as late
SELECT kind, toString(region) AS region, toString(station_id) AS station_id, toString(event_id) AS event_id,
       what, occurred_at, published_at, round(dateDiff('second', occurred_at, published_at) / 3600, 1) AS delay_hours,
       ingested_at
FROM
(
    SELECT 'clearance' AS kind, region, station_id, event_id, toString(direction) AS what, occurred_at,
           published_at, ingested_at
    FROM clearances
    WHERE occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
      AND published_at >= occurred_at + toIntervalHour({min_delay_hours:UInt32})
    UNION ALL
    -- a station alert's first publication: its status updates (acknowledged, resolved ...) are republished
    -- with the alert's own occurred_at, and a resolution days later is not a late upload
    SELECT 'alert', any(region), any(station_id), event_id, toString(any(kind)), min(occurred_at), min(published_at),
           min(ingested_at)
    FROM alerts
    WHERE occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
    GROUP BY event_id
    HAVING min(published_at) >= min(occurred_at) + toIntervalHour({min_delay_hours:UInt32})
    UNION ALL
    SELECT 'case', region, station_id, event_id, concat(toString(stage), ' ', case_id), occurred_at,
           published_at, ingested_at
    FROM cases
    WHERE occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
      AND published_at >= occurred_at + toIntervalHour({min_delay_hours:UInt32})
)
ORDER BY delay_hours DESC, occurred_at, event_id
