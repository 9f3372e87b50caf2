"""The `gaa` script and `python -m gaa_cli`.

Importing the CLI loads Typer and Rich only (torch, pandas and pyarrow load
inside the commands, where Ctrl-C is handled); a Ctrl-C even that early ends the
program quietly with exit code 130, like a Ctrl-C later on. SIGTERM (sent by
`timeout`, job schedulers and container stops) is handled like Ctrl-C, with exit
code 143: training saves a resumable checkpoint first.
"""

import signal
import sys

from gaa_cli.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)  # the training loop installs its own while it runs
    try:
        from gaa_cli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("gaa: interrupted: stopped by Ctrl-C while starting\n")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        sys.stderr.write("gaa: interrupted: stopped by SIGTERM while starting\n")
        sys.exit(EXIT_TERMINATED)
    cli_main()


if __name__ == "__main__":
    main()
