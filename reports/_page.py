"""One self-contained HTML page: inline CSS, images embedded as data URLs, no script, no link to
anything outside the file, so it opens from disk with no server and no network.

Every piece of text is escaped here; callers pass plain strings.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_CSS = """
:root { --fg: #1d2329; --muted: #5b6670; --line: #d8dde2; --pass: #1b7a3a; --fail: #b3261e;
        --warn: #8a5a00; --bg-pass: #e6f4ea; --bg-fail: #fbe9e7; --bg-warn: #fff4e0; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 980px; padding: 24px 20px 64px; line-height: 1.45; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 24px 0 6px; }
p.subtitle { color: var(--muted); margin: 0 0 16px; }
p.note, figcaption { color: var(--muted); font-size: 0.92rem; }
.verdict { border-radius: 6px; padding: 12px 16px; font-size: 1.1rem; font-weight: 600; margin: 16px 0; }
.verdict.pass { background: var(--bg-pass); color: var(--pass); }
.verdict.fail { background: var(--bg-fail); color: var(--fail); }
.verdict.warn { background: var(--bg-warn); color: var(--warn); }
.verdict .detail { display: block; font-weight: 400; font-size: 0.95rem; margin-top: 4px; color: var(--fg); }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 0.92rem; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
td.pass { color: var(--pass); font-weight: 600; }
td.fail { color: var(--fail); font-weight: 600; }
td.warn { color: var(--warn); font-weight: 600; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
figure { margin: 18px 0 26px; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figure h3 { margin-top: 0; }
ul.problems { margin: 4px 0; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.85rem; }
"""

_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-") or "chart"


@dataclass(frozen=True)
class Chart:
    """A chart on the page and in its own PNG file: what it shows, and one sentence on reading it."""

    title: str
    how_to_read: str
    png: bytes
    alt: str
    slug: str = ""


@dataclass(frozen=True)
class Cell:
    """A table cell: ``kind`` is "num" (right-aligned), "nowrap", "pass", "fail", "warn" or ""."""

    text: str
    kind: str = ""


CellLike = str | Cell


@dataclass
class Page:
    """A report page, built top to bottom."""

    title: str
    subtitle: str = ""
    _parts: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    def verdict(self, headline: str, kind: str, detail: str = "") -> None:
        """The answer first: pass (green), fail (red) or warn (amber)."""
        extra = f'<span class="detail">{html.escape(detail)}</span>' if detail else ""
        self._parts.append(f'<div class="verdict {kind}" role="status">{html.escape(headline)}{extra}</div>')

    def section(self, heading: str, intro: str = "") -> None:
        self._parts.append(f'<h2 id="{slugify(heading)}">{html.escape(heading)}</h2>')
        if intro:
            self.paragraph(intro)

    def subheading(self, text: str) -> None:
        self._parts.append(f"<h3>{html.escape(text)}</h3>")

    def paragraph(self, text: str, *, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def bullet_list(self, items: Iterable[str], *, css_class: str = "problems") -> None:
        lines = "".join(f"<li>{html.escape(item)}</li>" for item in items)
        self._parts.append(f'<ul class="{css_class}">{lines}</ul>')

    def facts(self, pairs: Sequence[tuple[str, str]]) -> None:
        """A label/value list (what was run, on what)."""
        rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in pairs)
        self._parts.append(f'<dl class="facts">{rows}</dl>')

    def table(
        self,
        headers: Sequence[CellLike],
        rows: Sequence[Sequence[CellLike]],
        *,
        table_id: str = "",
        caption: str = "",
    ) -> None:
        def cell(tag: str, value: CellLike) -> str:
            item = value if isinstance(value, Cell) else Cell(value)
            cls = f' class="{item.kind}"' if item.kind else ""
            return f"<{tag}{cls}>{html.escape(item.text)}</{tag}>"

        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        head = "".join(cell("th", h) for h in headers)
        body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
        self._parts.append(f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if caption:
            self.paragraph(caption, note=True)

    def chart(self, chart: Chart) -> Chart:
        """Embed the chart (as a data URL) with its title above and how to read it below."""
        slug = chart.slug or slugify(chart.title)
        slug = f"{len(self.charts) + 1:02d}-{slug}"
        placed = Chart(chart.title, chart.how_to_read, chart.png, chart.alt, slug)
        self.charts.append(placed)
        data = base64.b64encode(chart.png).decode("ascii")
        self._parts.append(
            f'<figure id="{slug}"><h3>{html.escape(chart.title)}</h3>'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(chart.alt)}">'
            f"<figcaption>{html.escape(chart.how_to_read)}</figcaption></figure>"
        )
        return placed

    def render(self, footer: str = "") -> str:
        subtitle = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        foot = f"<footer>{html.escape(footer)}</footer>" if footer else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{subtitle}{''.join(self._parts)}{foot}</body></html>\n"
        )


@dataclass(frozen=True)
class ReportResult:
    """Where a report was written: the page and one PNG per chart."""

    html: Path
    pngs: list[Path]


REPORT_FILE = "report.html"


def write_page(page: Page, out_dir: Path, footer: str = "") -> ReportResult:
    """Write the page and its charts as files; the page does not need the PNGs (they are embedded)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / REPORT_FILE).exists():
        # A report written here before: its charts go, so none is left over from another run.
        for old in out_dir.glob("[0-9][0-9]-*.png"):
            old.unlink()
    pngs = []
    for chart in page.charts:
        path = out_dir / f"{chart.slug}.png"
        path.write_bytes(chart.png)
        pngs.append(path)
    target = out_dir / REPORT_FILE
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page.render(footer), encoding="utf-8")
    tmp.replace(target)
    return ReportResult(html=target, pngs=pngs)
