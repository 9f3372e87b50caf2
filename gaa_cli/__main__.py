"""The `gaa` script and `python -m gaa_cli`.

Importing the CLI loads Typer and Rich only (torch, pandas and pyarrow load
inside the commands, where Ctrl-C is handled); a Ctrl-C even that early ends the
program quietly with exit code 130, like a Ctrl-C later on.
"""

import sys


def main() -> None:
    try:
        from gaa_cli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("gaa: interrupted: stopped by Ctrl-C while starting\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
