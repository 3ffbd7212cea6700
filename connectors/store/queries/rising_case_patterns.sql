-- title: Rising case patterns by type, method and nationality
-- description: Cases opened in the recent window against the same pattern's rate in the baseline window
--   before it (scaled to the recent window's length); z = (recent - expected) / sqrt(max(expected, 1)).
-- param as_of Date = 2100-01-01: last day of the recent window (UTC)
-- param recent_days UInt32 = 7: length of the recent window, days
-- param baseline_days UInt32 = 28: length of the baseline window before it, days
-- param min_cases UInt32 = 3: fewest recent cases for a pattern to be listed
-- param min_z Float64 = 2: smallest z for a pattern to be listed
SELECT
    case_type,
    method,
    nationality,
    sumIf(events, day > {as_of:Date} - {recent_days:UInt32}) AS recent,
    round(sumIf(events, day <= {as_of:Date} - {recent_days:UInt32}) * {recent_days:UInt32} / {baseline_days:UInt32}, 2) AS expected,
    round((recent - expected) / sqrt(greatest(expected, 1)), 2) AS z
FROM cases_daily
WHERE stage = 'OPENED'
  AND day > {as_of:Date} - {recent_days:UInt32} - {baseline_days:UInt32}
  AND day <= {as_of:Date}
GROUP BY case_type, method, nationality
HAVING recent >= {min_cases:UInt32} AND z >= {min_z:Float64}
ORDER BY z DESC, recent DESC, case_type, method, nationality
