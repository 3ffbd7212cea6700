"""The store: everything of the bus that is ClickHouse, in one package.

- ``client``: the connection, the embedded engine (``chdb://``) or a server (``http(s)://``);
- ``schema`` and ``migrations/``: the tables and views, versioned migrations, one node or a cluster;
  ``tables``: how each event kind maps onto its table; ``reference``: the data behind the dictionaries;
  ``access``: the read-only role and its limits;
- ``sink``: Kafka into the tables, exactly once (``yrdbus sink``);
- ``queryserver`` and ``query_policy``: the read-only HTTP endpoint in ClickHouse's conventions and what it lets
  through; ``queries/``: the named queries (``yrdbus query``).
"""
from connectors.store.schema import (  # noqa: F401
    DEFAULT_DATABASE, MigrateResult, MigrationError, Target, load, migrate, render, render_script,
)
