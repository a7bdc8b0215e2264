"""Screenshot of a dashboard page in headless Chromium (the README's docs/figures/dashboard.png).

    python docs/screenshot_dashboard.py dashboard.html docs/figures/dashboard.png

Debian's ``chromium`` (``apt-get install -y chromium``) driven by Playwright (the dev extra); no
browser is downloaded. Waits until the page reports every panel drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path


def screenshot(html: Path, png: Path, width: int = 1400) -> float:
    """Write the full-page PNG; return the ms from navigation start to every panel drawn."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(html.resolve().as_uri())
        page.wait_for_function("window.dashboard && window.dashboard.ready", timeout=300_000)
        render_ms = float(page.evaluate("window.dashboard.renderMs"))
        page.evaluate("window.dashboard.drawAll()")  # the panels below the window: drawn when scrolled to
        page.screenshot(path=str(png), full_page=True)
        browser.close()
    return render_ms


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ms = screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    sys.stdout.write(f"{sys.argv[2]}: all panels drawn {ms / 1000:.2f} s after navigation start\n")
