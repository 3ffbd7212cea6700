-- title: Cross-region hits by region pair and day
-- description: Travellers flagged by a station alert in one region and cleared afterwards in another
--   region within the window: hits (clearances) and distinct subjects per day, flagged-in and seen-in region.
-- param since DateTime64(3) = 1970-01-01 00:00:00: clearances from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: clearances before this event time (UTC)
-- param window_days UInt32 = 30: how long after the alert a clearance elsewhere counts
SELECT
    toDate(c.occurred_at) AS day,
    a.region AS flagged_in,
    toString(c.region) AS seen_in,
    count() AS hits,
    uniqExact(c.subject) AS subjects
FROM clearances AS c
INNER JOIN
(
    SELECT assumeNotNull(subject) AS subject, toString(region) AS region, min(occurred_at) AS flagged_at
    FROM alerts
    WHERE subject IS NOT NULL AND occurred_at < {until:DateTime64(3)}
    GROUP BY subject, region
) AS a ON c.subject = a.subject
WHERE c.subject IN (SELECT assumeNotNull(subject) FROM alerts WHERE subject IS NOT NULL)
  AND c.occurred_at >= {since:DateTime64(3)} AND c.occurred_at < {until:DateTime64(3)}
  AND toString(c.region) != a.region
  AND c.occurred_at >= a.flagged_at
  AND c.occurred_at < a.flagged_at + toIntervalDay({window_days:UInt32})
GROUP BY day, flagged_in, seen_in
ORDER BY day, flagged_in, seen_in
