"""The ClickHouse side of the bus: the schema (versioned migrations, one node or a cluster), the
reference data behind the dictionaries, and how each event kind maps onto its table."""
from connectors.clickhouse.schema import (  # noqa: F401
    DEFAULT_DATABASE, MigrateResult, MigrationError, Target, load, migrate, render, render_script,
)
