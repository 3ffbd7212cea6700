-- title: 144-hour transit stays: open, exited, overstayed
-- description: Every entry under the 144-hour visa-free transit, with the subject's first exit after it
--   (in any region): EXITED within 144 hours, OVERSTAYED (exited late, or not exited and past the deadline
--   at as_of), or OPEN (not exited, deadline not passed).
-- param as_of DateTime64(3) = 2100-01-01 00:00:00: the time the status is judged at (UTC)
-- param since DateTime64(3) = 1970-01-01 00:00:00: entries from this event time (UTC)
-- param status String = '': only this status (OPEN, EXITED, OVERSTAYED); empty for all
SELECT
    e.subject AS subject,
    e.occurred_at AS entered_at,
    e.region AS entry_region,
    e.port_code AS entry_port,
    e.nationality AS nationality,
    e.occurred_at + toIntervalHour(144) AS deadline,
    x.occurred_at AS exited_at,
    x.region AS exit_region,
    x.port_code AS exit_port,
    multiIf(exited_at IS NOT NULL AND exited_at <= deadline, 'EXITED',
            exited_at IS NOT NULL OR {as_of:DateTime64(3)} > deadline, 'OVERSTAYED',
            'OPEN') AS status
FROM
(
    SELECT subject, occurred_at, toString(region) AS region, toString(port_code) AS port_code,
           toString(nationality) AS nationality
    FROM clearances
    WHERE entry_basis = 'TRANSIT_144H' AND direction = 'ENTRY'
      AND occurred_at >= {since:DateTime64(3)} AND occurred_at <= {as_of:DateTime64(3)}
) AS e
ASOF LEFT JOIN
(
    SELECT subject, occurred_at, toString(region) AS region, toString(port_code) AS port_code
    FROM clearances
    WHERE direction = 'EXIT' AND occurred_at <= {as_of:DateTime64(3)}
      AND subject IN (SELECT subject FROM clearances WHERE entry_basis = 'TRANSIT_144H' AND direction = 'ENTRY')
) AS x ON e.subject = x.subject AND x.occurred_at >= e.occurred_at
WHERE {status:String} = '' OR status = {status:String}
ORDER BY entered_at, subject
SETTINGS join_use_nulls = 1
