"""One rule for every name that reaches a person: text from someone else's dataset is shown, never obeyed.

A class, file or folder name may hold control characters. Printed raw, `\\x1b]0;TITLE\\x1b\\\\` retitles the
terminal, `\\x1b[2J` clears it and `\\x1b[5A` moves the cursor up over a warning; a bidi override makes
`gpj.exe` read as `exe.jpg`. `shown` writes each such character as its escape (`\\x1b`, `\\n`, `\\u202e`), in the
terminal, in error lines, in markdown and HTML. Everything else (accents, CJK, emoji) stays as typed.

A CSV cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by spreadsheet
programs (`=HYPERLINK(...)`); `csv_cell` prefixes such a text cell with `'` (OWASP's rule for CSV injection), and
`csv_frame` applies both rules to every CSV the tool writes. Numbers are never changed, so `-0.5` stays a number.
JSON output keeps names exact: the JSON encoder writes control characters as `\u001b`, which no terminal obeys.

An error line quotes a value from the user through `brief`: at most about 200 characters, so a 50 MB TOML string
or a 4,000-digit number never floods the terminal.

>>> shown("cat\\x1b[2J")
'cat\\\\x1b[2J'
>>> shown("a\\nb"), shown("caf\\u00e9")
('a\\\\nb', 'café')
>>> csv_cell("=HYPERLINK(1)"), csv_cell("dog"), csv_cell(-0.5)
("'=HYPERLINK(1)", 'dog', -0.5)
>>> brief("x" * 10**6)[-28:]
"xxxx' (1,000,000 characters)"
"""

from __future__ import annotations

import math
import re
import reprlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is not imported for the CLI's start
    import pandas as pd

# C0 controls, DEL, C1 controls; bidi embeddings, overrides and isolates, and the invisible direction marks.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_control(match: re.Match) -> str:
    char = match.group()
    return NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def shown(text: object) -> str:
    """`text` with every control and bidi character written as its escape; the rest unchanged."""
    return CONTROL.sub(escape_control, str(text))


def warn(message: object) -> None:
    """One `warning: ...` line on stderr, its control characters escaped: the one way a warning reaches a person
    from code that has no console of its own (image decoding, figures, the cache, data checks)."""
    print(f"warning: {shown(message)}", file=sys.stderr)


def csv_cell(value: object) -> object:
    """A text cell that a spreadsheet would read as a formula, prefixed with `'`; anything else unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as text a person may open or print: control characters of column names and text cells escaped
    (`shown`), and formula-like cells prefixed (`csv_cell`). Numbers are untouched."""
    text = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str")]
    safe = frame.assign(**{c: frame[c].map(lambda v: csv_cell(shown(v)) if isinstance(v, str) else v)
                           for c in text}) if text else frame
    return safe.set_axis([csv_cell(shown(c)) for c in frame.columns], axis=1)


BRIEF = 200  # characters of a value from the user that an error line quotes at most (about)
QUOTE = reprlib.Repr()  # the standard library's bounded repr: long text, numbers and containers cut with `...`
QUOTE.maxstring = QUOTE.maxother = BRIEF
# Containers: BRIEF // 4 items and 8 levels before the cut, so a short one is quoted whole (the defaults cut at 6).
QUOTE.maxlist = QUOTE.maxtuple = QUOTE.maxset = QUOTE.maxfrozenset = QUOTE.maxdict = BRIEF // 4
QUOTE.maxlevel = 8
QUOTE.maxlong = BRIEF


def brief(value: object) -> str:
    """`value` as an error line quotes it (its repr), at most about BRIEF characters: longer ones keep their start
    and end around `...`, and text says its length."""
    if isinstance(value, int) and value.bit_length() > 4 * BRIEF:  # its repr is slow, refused past 4300 digits
        return f"an integer of about {round(value.bit_length() * math.log10(2)):,} digits"
    text = QUOTE.repr(value)
    if len(text) > BRIEF:  # a container of long items
        text = f"{text[:BRIEF // 2]}...{text[-(BRIEF // 2):]}"
    return f"{text} ({len(value):,} characters)" if isinstance(value, str) and len(value) > BRIEF else text
