"""What every command of the `yrdbus` command line shares: how it fails."""
from __future__ import annotations

import typer


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` in red on standard error and exit with ``code`` (1: the input or the state is wrong,
    2: the command line is)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
