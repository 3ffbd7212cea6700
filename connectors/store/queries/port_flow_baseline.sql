-- title: Port flow against its baseline
-- description: Crossings per port and hour against the expected crossings of that port, hour and weekday:
--   annual_crossings x region share x port share / 8760 x hour_of_day[kind][h] x day_of_week[d]
--   (schemas/reference/flow_profile.json). ratio > 1 is busier than usual.
-- param since DateTime64(3) = 1970-01-01 00:00:00: from this hour (UTC)
-- param until DateTime64(3) = 2100-01-01 00:00:00: before this hour (UTC)
-- param region String = '': only this region; empty for all
-- param port String = '': only this port code; empty for all
SELECT
    f.hour AS hour,
    f.region AS region,
    f.port_code AS port_code,
    f.crossings AS crossings,
    round(b.crossings_per_hour * dictGet('regions', 'share_of_crossings', f.region)
          * dictGet('ports', 'share_of_region', f.port_code), 1) AS expected,
    round(crossings / nullIf(expected, 0), 2) AS ratio
FROM
(
    SELECT hour, toString(region) AS region, toString(port_code) AS port_code, sum(crossings) AS crossings,
           dictGet('ports', 'kind', toString(port_code)) AS kind, toHour(hour) AS h, toDayOfWeek(hour) - 1 AS wd
    FROM flow_hourly
    WHERE hour >= {since:DateTime64(3)} AND hour < {until:DateTime64(3)}
      AND ({region:String} = '' OR region = {region:String})
      AND ({port:String} = '' OR port_code = {port:String})
    GROUP BY hour, region, port_code
) AS f
LEFT JOIN ref_flow_baseline AS b ON b.kind = f.kind AND b.hour = f.h AND b.weekday = f.wd
ORDER BY hour, region, port_code
