"""How `metering` commands talk to a terminal: one argument parser for every command, and
one way to print records.

The parser shows each option's default in `--help`, keeps the examples of a command's epilog
as written, and reports a bad argument in one line (`metering invoices list: argument
--status: invalid choice: 'bogus' ...`) with exit status 2, never a usage block or a
traceback. `CommandError` is the same for what only the command can check (a team that does
not exist, a file that cannot be written). Records print as an aligned table with a header,
or as JSON or CSV (`--format`), in the order the command sorted them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

FORMATS = ("table", "json", "csv")


class CommandError(Exception):
    """A bad argument found by the command itself: one line on stderr, exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Examples keep their lines (other text is wrapped); every option with a real default
    says it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and default not in (None, False, argparse.SUPPRESS)
                and not isinstance(default, bool) and action.option_strings):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and the formatter above, for every subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def examples(*lines: str) -> str:
    """An epilog of example invocations."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# --- argument types: each refuses a bad value with a message naming what is wrong -------


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {number}")
    return number


def writable_file(value: str) -> str:
    """A file the command may create or overwrite: its directory exists and is writable. The
    file itself is only opened once there is something to write."""
    path = Path(value)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {value}: no directory {parent}")
    import os

    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {value}: {parent} is not writable")
    return value


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    right: bool = False  # numbers and amounts line up on the right


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="an aligned table for people, or JSON or CSV for programs")


def render(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], fmt: str,
           out: TextIO | None = None, *, empty: str = "nothing to show") -> None:
    """Print records in the chosen format. JSON and CSV carry the columns' keys; the table
    carries their headers. An empty table says so on stderr (stdout stays empty)."""
    out = out or sys.stdout

    def cells(row: Mapping[str, Any]) -> list[str]:
        return ["" if row.get(c.key) is None else str(row.get(c.key)) for c in columns]

    if fmt == "json":
        out.write(json.dumps([{c.key: row.get(c.key) for c in columns} for row in rows],
                             indent=2, default=str) + "\n")
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        writer.writerows(cells(row) for row in rows)
        out.write(buffer.getvalue())
        return
    if not rows:
        print(empty, file=sys.stderr)
        return
    table = [[c.header for c in columns], *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        parts = [text.rjust(w) if c.right else text.ljust(w)
                 for text, w, c in zip(line, widths, columns, strict=True)]
        out.write("  ".join(parts).rstrip() + "\n")
