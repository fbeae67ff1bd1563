"""The study report as one HTML page a person opens in a browser, offline: the Markdown report
rendered (markdown-it-py, CommonMark with tables), every figure it links embedded as a data URI,
and a content security policy that forbids the page any request outside itself."""
from __future__ import annotations

import base64
from pathlib import Path

from markdown_it import MarkdownIt

from fly64study.contract import ContractError
from fly64study.files import atomic_path

# nothing but the page itself: images only as data URIs, the inline style below, no script
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; } code { background: #f4f4f4; padding: 0 3px; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }"""


def _data_uri(path: Path) -> str:
    if not path.is_file():
        raise ContractError(f"{path}: a figure the report shows is missing; run `dvc repro` for the stage that draws it")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html(markdown_text: str, folder: str | Path, title: str = "Study report") -> str:
    """``markdown_text`` as a self-contained page; its image links are read relative to ``folder``."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown_text)
    for token in tokens:
        for child in token.children or ():
            if child.type == "image":
                child.attrSet("src", _data_uri(Path(folder) / child.attrGet("src")))
    body = md.renderer.render(tokens, md.options, {})
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">\n"
            f"<title>{title}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def write_html(path: str | Path, markdown_text: str) -> None:
    """``index.html`` beside the Markdown report, whose links it resolves."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(html(markdown_text, path.parent))
