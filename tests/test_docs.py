"""Every `ambig-bench ...` command line in README.md and docs/ parses with the CLI's own parser.

The commands are not run: click parses each one (options, their values' types, required arguments), so a renamed
or removed option breaks this test instead of the documentation's readers.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command

from ambig_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^\s*(?:\$ )?(ambig-bench (?:[^\n]*\\\n)*[^\n]*)", re.M)  # lines, with \ continuations
INLINE = re.compile(r"`(ambig-bench [^`]+)`")


def commands(page: Path) -> list[str]:
    text = page.read_text()
    found = [m.replace("\\\n", " ") for m in COMMAND.findall(text)]
    found += [m.replace("\\|", "|") for m in INLINE.findall(text)]
    # A comment after a command is prose, not arguments.
    return [re.split(r"\s#\s", c)[0].strip() for c in found]


def parse(line: str) -> None:
    """Parse `line` as the CLI would, without running it; a usage error raises."""
    group = get_command(app)
    name, *rest = shlex.split(line)[1:]
    if name.startswith("-"):  # options of the program itself (--help)
        group.make_context("ambig-bench", [name, *rest])
        return
    parent = group.context_class(group, info_name="ambig-bench")
    command = group.get_command(parent, name)
    assert command is not None, f"no command {name!r}"
    if rest:  # `ambig-bench predict` alone, in prose, names the command
        command.make_context(name, rest, parent=parent)


def kinds(error: BaseException) -> set[str]:
    # typer ships its own copy of click, so its exceptions are matched by name.
    return {c.__name__ for c in type(error).__mro__}


# --install-completion would change the reader's shell set-up while being parsed: it is typer's own option.
CASES = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in commands(page)
         if "--install-completion" not in line]


def test_the_documentation_shows_commands():
    assert len(CASES) >= 20 and {page for page, _ in CASES} >= {"README.md", "docs/report.md"}


@pytest.mark.parametrize("page, line", CASES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(CASES)])
def test_documented_command_parses(page, line):
    try:
        parse(line)
    except Exception as e:
        if "Exit" in kinds(e):  # --help finishes while parsing
            assert e.exit_code == 0, f"{page}: {line}"
        elif "UsageError" in kinds(e):
            pytest.fail(f"{page}: `{line}` does not parse: {e.format_message()}")
        else:
            raise
