"""Reading a report page back in tests: its tables, images and every URL it references."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np


class PageReader(HTMLParser):
    """Tables by id (rows of cell texts), label/value facts (<dt>/<dd>), the verdict's text, <img>
    sources, <title>, and every attribute that is a URL."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.facts: dict[str, str] = {}
        self.verdict = ""
        self._dt: str | None = None
        self._fact: list[str] | None = None
        self._in_verdict = 0
        self.images: list[str] = []
        self.urls: list[str] = []
        self.scripts = 0
        self.title = ""
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            if values.get(name):
                self.urls.append(str(values[name]))
        if tag == "script":
            self.scripts += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "img":
            self.images.append(str(values.get("src", "")))
        elif tag == "table":
            self._table = values.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag in ("dt", "dd"):
            self._fact = []
        elif tag == "div" and "verdict" in (values.get("class") or ""):
            self._in_verdict += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "dt" and self._fact is not None:
            self._dt, self._fact = "".join(self._fact).strip(), None
        elif tag == "dd" and self._fact is not None and self._dt is not None:
            self.facts[self._dt], self._fact = "".join(self._fact).strip(), None
        elif tag == "div" and self._in_verdict:
            self._in_verdict -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._fact is not None:
            self._fact.append(data)
        if self._in_verdict:
            self.verdict += data
        if self._in_title:
            self.title += data


def read_page(path: Path) -> tuple[PageReader, str]:
    text = path.read_text(encoding="utf-8")
    reader = PageReader()
    reader.feed(text)
    reader.close()
    return reader, text


def external_references(text: str, reader: PageReader) -> list[str]:
    """Anything that would make a browser fetch something: non-data URLs, scripts, CSS imports."""
    found = [url for url in reader.urls if not url.startswith("data:") and not url.startswith("#")]
    # Web addresses anywhere (the page shows ws:// server addresses as text; those fetch nothing).
    found += re.findall(r"https?://[^\s\"'<>)]+", re.sub(r"data:[^\"']+", "", text))
    found += re.findall(r"@import|url\(", text)
    if reader.scripts:
        found.append(f"{reader.scripts} <script> element(s)")
    return found


def embedded_pngs(reader: PageReader) -> list[bytes]:
    prefix = "data:image/png;base64,"
    return [base64.b64decode(src[len(prefix) :]) for src in reader.images if src.startswith(prefix)]


def png_pixels(path_or_bytes: Path | bytes) -> np.ndarray:
    """The image's pixels (rows, columns, channels), decoded by matplotlib's PNG reader."""
    import io

    from reports._mpl import prepare

    prepare()  # the Agg backend and a private config folder, before matplotlib is imported
    from matplotlib import image

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return np.asarray(image.imread(source, format="png"))
