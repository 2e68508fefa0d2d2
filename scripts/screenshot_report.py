"""Screenshot a report page for a person to look at: ``python -m scripts.screenshot_report HTML OUT.png``.

Opens HTML in headless Chromium (tests/browser.py, the same code the browser test uses), writes a
full-page PNG to OUT.png and prints the page's title, its images (loaded of total), any request that
left file:/data:, the screenshot's size and how long it took. Exit code 0 when the page rendered with
every image and nothing fetched from outside, 1 when not, 2 when Chromium could not render it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.browser import BrowserError, render_page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report's HTML file")
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed (default 60)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"screenshot_report: {args.html}: no such file", file=sys.stderr)
        return 2
    try:
        render = render_page(args.html, args.out, args.timeout)
    except BrowserError as error:
        print(f"screenshot_report: {error}", file=sys.stderr)
        return 2
    width, height = render.screenshot_size
    print(f"title: {render.title!r}")
    print(f"images: {render.images_loaded} of {render.images_total} loaded")
    print(f"outside requests: {', '.join(render.external_requests) or 'none'}")
    print(f"screenshot: {args.out.resolve()} ({width} x {height} px), in {render.seconds:.1f} s")
    ok = render.images_loaded == render.images_total and not render.external_requests
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
