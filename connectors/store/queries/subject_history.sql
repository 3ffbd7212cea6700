-- title: A subject's history across all regions
-- description: Every clearance, station alert, case event and derived alert of one subject token, in
--   every region, oldest first (the paper's "where else has this traveller been seen"). Reads
--   subject_events, which the four event tables fill as they are written (migration 0006).
-- param subject String: the subject token (HMAC of the document), as on the bus
-- param since DateTime64(3) = 1970-01-01 00:00:00: from this event time (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: up to this event time (UTC, exclusive)
SELECT occurred_at, kind, toString(region) AS region, toString(port_code) AS port_code, toString(what) AS what,
       detail, id
FROM subject_events FINAL
WHERE subject = {subject:String} AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}
ORDER BY occurred_at, kind, id
