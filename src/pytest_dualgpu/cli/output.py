"""How the command ends: the exit code after Ctrl-C, and a command's text printed or written to a file.

Its own module because the command's front (``main.py``) and its measuring subcommands (``commands.py``)
both end this way, and the front loads the subcommands only when one is asked for.
"""

from __future__ import annotations

import sys

from pytest_dualgpu.files import write_text

#: The shell's exit code for a process stopped by SIGINT.
INTERRUPTED = 130


def emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` (its folder made as needed) and say where it went."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    written = write_text(output, text, "--output")
    print(f"dualgpu: wrote {written}", file=sys.stderr)
