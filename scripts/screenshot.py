"""Retake the README screenshot: launch the app on the default (embedded) model, generate with
attention maps in headless chromium, and save the page.

    python scripts/screenshot.py                       # -> docs/screenshot-generate.png
    python scripts/screenshot.py --model PATH --prompt "..." --out shot.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompt", default="a big red circle on the left and a small blue square on the right")
    parser.add_argument("--word", default="circle", help="the word whose heat map is shown")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot-generate.png"))
    args = parser.parse_args()

    from app_harness import launched_app
    from playwright.sync_api import sync_playwright

    from studio.engine import Engine

    with launched_app(Engine(args.model), Path(tempfile.mkdtemp())) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.fill("#prompt textarea", args.prompt)
        page.uncheck("#random-seed input")
        for elem_id, value in (("seed", args.seed), ("steps", args.steps), ("batch-size", args.batch_size)):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        page.check("#show-attention input")
        page.click("#generate-btn")
        page.wait_for_selector("#status [data-state=done]")
        page.locator("#token-pick label", has_text=args.word).first.click()
        page.wait_for_timeout(1500)
        page.evaluate("window.scrollTo(0, 0)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
