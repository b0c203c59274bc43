"""One document model for comparison.md and report.md: a list of blocks, rendered to markdown, and to a
self-contained HTML page from that same markdown (markdown-it), figures embedded as data URIs.

The HTML is the markdown's own rendering, so the two never say different things; only figure files are
swapped for their bytes, and links to them for in-page anchors.

>>> import pandas as pd
>>> text = to_markdown([Heading("Demo", 1), Table(pd.DataFrame({"strategy": ["soft"], "n": [3]}))])
>>> print(text)
# Demo
<BLANKLINE>
| strategy | n |
|---|---|
| soft | 3 |
<BLANKLINE>
>>> "<table>" in to_html(text, "demo", {})
True
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from urllib.parse import unquote

import pandas as pd
from markdown_it import MarkdownIt

from ambig_bench.shown import shown

FIGURES = "figures/"  # where figures are written, relative to the document


# What markdown (CommonMark + tables) could read as markup in user text: backslash, code, emphasis, strike-through,
# HTML and autolinks (<), entities (&), cells (|), intraword-less _, and a ] that would close a link, image or
# reference (followed by "(", "[" or ":"). A lone [ or ] stays as typed, so "0.91 [0.88, 0.94]" reads as it is.
MARKUP = re.compile(r"[\\`*~<>&|]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|\](?=[(\[:])")


def escape(text: object) -> str:
    """User text (a class name, a path) as markdown that shows exactly that text, on one line."""
    return MARKUP.sub(lambda m: "\\" + m.group(), shown(" ".join(str(text).splitlines())))


def code(text: object) -> str:
    """User text as a code span: fenced by more backticks than it holds, so none of it can close the span."""
    flat = shown(" ".join(str(text).splitlines()))
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", flat)), default=0))
    return f"{fence} {flat} {fence}" if "`" in flat else f"`{flat}`"


@dataclass
class Heading:
    text: str  # inline markdown, like Paragraph
    level: int = 2


@dataclass
class Paragraph:
    text: str  # inline markdown: `code`, **bold**, *italic*, [links](figures/x.png); user parts through escape()


@dataclass
class Bullets:
    items: list[str]  # inline markdown, like Paragraph


@dataclass
class Table:
    frame: pd.DataFrame  # column names and cells shown as text (escaped)...
    markdown: tuple[str, ...] = ()  # ...but in these columns, cells are markdown (our **bold**, figure links)


@dataclass
class Image:
    name: str  # file name under figures/
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image


def markdown_cell(value: object) -> str:
    # A "|" would end the cell and a newline the row: both would tear the table apart in markdown and HTML.
    return shown(" ".join(str(value).replace("|", "\\|").splitlines()))


def markdown_table(frame: pd.DataFrame, markdown: tuple[str, ...] = ()) -> str:
    """A pipe table; cells are text (escaped), except in the `markdown` columns."""
    header = "| " + " | ".join(map(escape, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    cells = [markdown_cell if col in markdown else escape for col in frame.columns]
    body = ["| " + " | ".join(f(v) for f, v in zip(cells, row, strict=True)) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def block_markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items) or "- (none)"
    if isinstance(block, Table):
        return markdown_table(block.frame, block.markdown)
    return f"![{block.caption}]({FIGURES}{block.name})\n\n*{block.caption}*"


def to_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(map(block_markdown, blocks)) + "\n"


# Built for a phone as much as a screen: the page never scrolls sideways; a table wider than the page scrolls inside
# its own box (.scroll), an interval never breaks across lines (.n), a long word (a path, a command) breaks rather
# than widen the page, and figures shrink to the page's width.
STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:break-word}.scroll{max-width:100%;overflow-x:auto;margin:1em 0}table{border-collapse:collapse;
font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top;text-align:left}th{background:#f3f3f3}
.n{white-space:nowrap}.long{min-width:14em}img{max-width:100%;height:auto;margin-top:1.5em}p>em:only-child{color:#555}
code{background:#f3f3f3;padding:0 3px}"""

VIEWPORT = "<meta name='viewport' content='width=device-width, initial-scale=1'>"  # a phone lays out at its width
NUMBER = r"[+−-]?\d+(?:\.\d+)?"
INTERVAL = re.compile(rf"{NUMBER} \[{NUMBER}, {NUMBER}\]")  # '0.912 [0.899, 0.925]', as compare.fmt writes it
WORD = 40  # characters: a word this long still fits a phone's screen
LONG = 30  # characters: a cell this long is text to wrap, not a value


def anchor(name: str) -> str:
    return "fig-" + name.removesuffix(".png")


def figure_name(url: str) -> str:
    # markdown-it percent-encodes URLs as it parses them ("a b.png" -> "a%20b.png"); figures are keyed by file name.
    return unquote(url).removeprefix(FIGURES)


def embed_image(self, tokens, idx, options, env) -> str:
    """A figure's file swapped for its PNG bytes, with an id that links to it can jump to."""
    token = tokens[idx]
    name = figure_name(token.attrGet("src"))
    if name in env["figures"]:
        token.attrSet("src", "data:image/png;base64," + base64.b64encode(env["figures"][name]).decode())
        token.attrSet("id", anchor(name))
    return self.image(tokens, idx, options, env)


def link_in_page(self, tokens, idx, options, env) -> str:
    """A link to a figure file points at the embedded figure instead: the page has no files beside it."""
    token = tokens[idx]
    name = figure_name(token.attrGet("href"))
    if name in env["figures"]:
        token.attrSet("href", "#" + anchor(name))
    return self.renderToken(tokens, idx, options, env)


def unbroken(self, tokens, idx, options, env) -> str:
    """Text as HTML, each 'mean [low, high]', and a text that is one short word (a strategy's name with its options,
    `label-smoothing@smoothing-eps=0.2`), in a span that never wraps: cells and sentences wrap between words, never
    inside an interval or at a name's hyphens."""
    content = tokens[idx].content
    if len(content) <= WORD and not any(c.isspace() for c in content):
        return f'<span class="n">{html.escape(content)}</span>'
    return INTERVAL.sub(lambda m: f'<span class="n">{m.group()}</span>', html.escape(content))


def text_cell(self, tokens, idx, options, env) -> str:
    """A cell holding a sentence gets a width to wrap in (.long): in a table wider than a phone, the browser would
    otherwise squeeze it to a word a line beside the columns that cannot wrap."""
    content = tokens[idx + 1].content
    if len(content) >= LONG and any(c.isspace() for c in content):
        tokens[idx].attrSet("class", "long")
    return self.renderToken(tokens, idx, options, env)


def scroll_box(self, tokens, idx, options, env) -> str:
    """A table inside a box of its own that scrolls sideways where the table is wider than the page."""
    tag = self.renderToken(tokens, idx, options, env)
    return '<div class="scroll">' + tag if tokens[idx].nesting == 1 else tag + "</div>\n"


def to_html(markdown: str, title: str, figures: dict[str, bytes]) -> str:
    """A self-contained page from `markdown`; `figures` maps each file name under figures/ to its PNG."""
    # Raw HTML off: a strategy or dataset name is shown as text, never interpreted as markup.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", embed_image)
    md.add_render_rule("link_open", link_in_page)
    md.add_render_rule("text", unbroken)
    md.add_render_rule("table_open", scroll_box)
    md.add_render_rule("table_close", scroll_box)
    md.add_render_rule("td_open", text_cell)
    body = md.render(markdown, {"figures": figures})
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>{VIEWPORT}"
            f"<title>{html.escape(shown(title))}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n")
