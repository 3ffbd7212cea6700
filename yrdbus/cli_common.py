"""What every command of the `yrdbus` command line shares: how it fails."""
from __future__ import annotations

import typer


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` in red on standard error and exit with ``code`` (1 unless the command documents
    another: 2 for options or input it cannot use at all, as for a usage error)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
