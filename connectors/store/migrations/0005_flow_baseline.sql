-- Expected crossings per hour of the whole region, by port kind, UTC hour and UTC weekday (Monday = 0),
-- from schemas/reference/flow_profile.json: annual_crossings / 8760 x hour_of_day[kind][h] x day_of_week[d].
-- A port's baseline is this x its region's share_of_crossings x its share_of_region (the dictionaries).
-- everywhere
CREATE TABLE IF NOT EXISTS {{table:ref_flow_baseline}} {{on_cluster}}
(
    kind               LowCardinality(String),
    hour               UInt8,
    weekday            UInt8,
    crossings_per_hour Float64
)
ENGINE = {{engine:ReplacingMergeTree}}
ORDER BY (kind, weekday, hour);
