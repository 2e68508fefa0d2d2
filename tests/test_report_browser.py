"""A report page renders in a real browser: headless Chromium (Debian's ``chromium``, installed by
``.ci/run``) opens it, its title is set, every image is decoded, nothing is fetched from outside
``file:``/``data:``, and a full-page screenshot is a PNG of the page's size that is not blank.

A control page with a broken image and an outside request shows that the checks see failures.
The DevTools plumbing is in ``tests/browser.py``; one render takes about 2 s.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from browser import VIEWPORT, PageRender, find_chromium, png_size, render_page

LOAD_SMALL = Path(__file__).resolve().parent / "data" / "load-small"
RENDER_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium is not installed (.ci/run installs Debian's chromium)")


def chart_png() -> bytes:
    """A small chart, drawn as the reports draw theirs (matplotlib, Agg)."""
    from reports._mpl import prepare

    prepare()  # Agg, and matplotlib's cache in a private folder rather than the home folder
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 2.5), dpi=80)
    axes.plot([0, 1, 2, 3, 4], [1, 3, 2, 5, 4], marker="o")
    axes.set_title("queue length")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def assert_screenshot(render: PageRender, screenshot: Path) -> None:
    """The screenshot decodes as a PNG of the size Chromium reported, the viewport's width, and is not
    one flat colour."""
    from reports._mpl import prepare

    prepare()
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)
    height, width = pixels.shape[:2]
    assert (width, height) == render.screenshot_size == png_size(screenshot.read_bytes())
    assert width == VIEWPORT[0] and height >= 100
    assert float(pixels[..., :3].std()) > 0.02, "the screenshot is (nearly) one colour"


def test_load_report_renders_in_chromium(tmp_path: Path) -> None:
    from reports import write_load_report

    result = write_load_report(LOAD_SMALL, tmp_path / "r")
    screenshot = tmp_path / "report.png"
    render = render_page(result.html, screenshot, RENDER_TIMEOUT_S)
    assert render.title == "Load test report: message delivery latency"
    assert render.images_total >= 1
    assert render.images_loaded == render.images_total
    assert render.external_requests == [], render.requests
    assert render.requests and render.requests[0] == result.html.resolve().as_uri()
    assert_screenshot(render, screenshot)


def test_a_self_contained_page_renders_with_every_image(tmp_path: Path) -> None:
    """The same checks on a page built here: inline base64 PNGs and one beside the page (file:)."""
    data = chart_png()
    (tmp_path / "beside.png").write_bytes(data)
    inline = base64.b64encode(data).decode("ascii")
    page = tmp_path / "page.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Self-contained page</title></head><body>"
        "<h1>Charts</h1>" + f"<img src='data:image/png;base64,{inline}' alt='inline'>" * 3
        + "<div style='height: 1500px'></div><img src='beside.png' alt='beside'></body></html>",
        encoding="utf-8")
    screenshot = tmp_path / "shots" / "page.png"
    render = render_page(page, screenshot, RENDER_TIMEOUT_S)
    assert render.title == "Self-contained page"
    assert (render.images_total, render.images_loaded) == (4, 4)
    assert render.external_requests == []
    assert (tmp_path / "beside.png").as_uri() in render.requests
    assert render.screenshot_size[1] > 1500  # the whole page, not only the viewport
    assert_screenshot(render, screenshot)


def test_the_checks_see_a_broken_image_and_an_outside_request(tmp_path: Path) -> None:
    """Control: a missing file and an http: image (refused at once on loopback's discard port) are
    neither loaded nor allowed."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><head><title>Broken</title></head><body><p>broken images</p>"
        "<img src='missing.png'><img src='http://127.0.0.1:9/chart.png'></body></html>", encoding="utf-8")
    render = render_page(page, tmp_path / "broken.png", RENDER_TIMEOUT_S)
    assert render.title == "Broken"
    assert (render.images_total, render.images_loaded) == (2, 0)
    assert render.external_requests == ["http://127.0.0.1:9/chart.png"]
