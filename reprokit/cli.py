"""The `reprokit` command line: a Typer app whose commands live in `reprokit.commands`.

Each command module parses options, calls the library and prints; none holds logic of its own.
"""

from __future__ import annotations

import sys

import typer

from reprokit import __version__
from reprokit.commands import register_all
from reprokit.commands.clickcompat import exceptions as click_exceptions
from reprokit.commands.common import cli_warnings, print_json

app = typer.Typer(
    name="reprokit",
    help="Measure, explain and reduce the irreproducibility of recommendation / CTR models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"reprokit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        envvar="REPROKIT_VERBOSE",
        help="Show the Python warnings of dependencies (torch, pandas, ...); reprokit's own "
        "warnings are always shown.",
    ),
) -> None:
    """reprokit trains N identically configured models and measures how differently they predict."""
    # Entered here, left when the command's context closes: the filters cover the whole command.
    ctx.with_resource(cli_warnings(verbose))


register_all(app)


def main() -> None:
    """Run the CLI; a usage error (unknown option, `--lr abc`) is one `error:` line and exit 2,
    like every other bad input, instead of click's usage box."""
    try:
        code = app(standalone_mode=False)
    except getattr(click_exceptions, "NoArgsIsHelpError", ()):  # the help was printed
        raise SystemExit(2) from None
    except click_exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "reprokit"
        message = f"{exc.format_message()} (see {command} --help)"
        if "--json" in sys.argv[1:]:  # the options were not parsed, so look at the words
            print_json({"schema_version": 1, "error": message})
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2) from None
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        raise SystemExit(130) from None
    except click_exceptions.ClickException as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
