"""The `yrdbus` command line. Every command and group has --help.

One way to add a command: a module ``yrdbus/cli_<area>.py`` defines its commands (functions, or a Typer group) and
``register(app)``, which adds them to the application; it is listed in ``AREAS`` below, in the order of --help.
Every command fails through ``yrdbus.cli_common.fail``."""
from __future__ import annotations

import typer

from yrdbus import (cli_gateway, cli_observability, cli_schemas, cli_security, cli_stack, cli_stations, cli_store,
                    cli_streams)

app = typer.Typer(
    help="yrdbus: the event-streaming intelligence bus of the Yangtze River Delta border-inspection agencies.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

AREAS = (cli_stack, cli_stations, cli_schemas, cli_streams, cli_gateway, cli_store, cli_observability, cli_security)
for area in AREAS:
    area.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
