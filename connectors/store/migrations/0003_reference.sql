-- Reference data (schemas/reference/*.json), reloaded by every `yrdbus db migrate`, and the
-- dictionaries the queries use to name regions, stations and ports (dictGet('yrdbus.ports', ...)).
-- The dictionaries read tables of the same database, so they need no host, user or password.

-- everywhere
CREATE TABLE IF NOT EXISTS {{table:ref_regions}} {{on_cluster}}
(
    code               String,
    name               String,
    name_zh            String,
    agency             String,
    neighbours         Array(String),
    share_of_crossings Float64,
    transit_144h       Bool
)
ENGINE = {{engine:ReplacingMergeTree}}
ORDER BY code;

-- everywhere
CREATE TABLE IF NOT EXISTS {{table:ref_stations}} {{on_cluster}}
(
    station_id String,
    region     String,
    name       String,
    ports      Array(String)
)
ENGINE = {{engine:ReplacingMergeTree}}
ORDER BY station_id;

-- everywhere
CREATE TABLE IF NOT EXISTS {{table:ref_ports}} {{on_cluster}}
(
    code            String,
    code_system     String,
    name            String,
    name_zh         String,
    region          String,
    kind            String,
    station_id      String,
    share_of_region Float64,
    transit_144h    Bool
)
ENGINE = {{engine:ReplacingMergeTree}}
ORDER BY code;

-- everywhere
CREATE TABLE IF NOT EXISTS {{table:ref_countries}} {{on_cluster}}
(
    alpha3 String,
    alpha2 String,
    name   String
)
ENGINE = {{engine:ReplacingMergeTree}}
ORDER BY alpha3;

CREATE DICTIONARY IF NOT EXISTS {{db}}.regions {{on_cluster}}
(
    code               String,
    name               String,
    name_zh            String,
    agency             String,
    neighbours         Array(String),
    share_of_crossings Float64,
    transit_144h       UInt8
)
PRIMARY KEY code
SOURCE(CLICKHOUSE(DB '{{db}}' TABLE 'ref_regions'))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 0 MAX 3600);

CREATE DICTIONARY IF NOT EXISTS {{db}}.stations {{on_cluster}}
(
    station_id String,
    region     String,
    name       String,
    ports      Array(String)
)
PRIMARY KEY station_id
SOURCE(CLICKHOUSE(DB '{{db}}' TABLE 'ref_stations'))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 0 MAX 3600);

CREATE DICTIONARY IF NOT EXISTS {{db}}.ports {{on_cluster}}
(
    code            String,
    code_system     String,
    name            String,
    name_zh         String,
    region          String,
    kind            String,
    station_id      String,
    share_of_region Float64,
    transit_144h    UInt8
)
PRIMARY KEY code
SOURCE(CLICKHOUSE(DB '{{db}}' TABLE 'ref_ports'))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 0 MAX 3600);
