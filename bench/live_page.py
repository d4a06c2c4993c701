"""The live page left open: the collector's memory (RSS) over 10 minutes with a page in headless
Chromium receiving its once-a-second updates, against a real line (two pymodbus simulators, a
private mosquitto, the real `collector run`). Prints the RSS figures; asserts nothing.

    python -m bench.live_page                      # 10 minutes, one page
    python -m bench.live_page --duration-s 60 --pages 8
    python -m bench.live_page --pages 0            # the same collector with no page open
    python -m bench.live_page --duration-s 0 --screenshot docs/images/live-page.png

``--screenshot`` saves the page at 1366x768 after the warm-up (with a third device that is
down, to show how a problem looks). Needs mosquitto and Debian's chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from playwright.async_api import Page

from tests.helpers import Mosquitto
from tests.livepage import browser, live_line, open_page, updates


async def run(duration_s: float, warmup_s: float, pages: int, screenshot: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-live-page-") as folder:
        work = Path(folder)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            async with (
                live_line(broker, work, down_device=screenshot is not None) as line,
                browser() as chromium,
            ):
                url = line.collector.url + "/"
                opened = [await open_page(chromium, url) for _ in range(pages)]
                await line.set_unit("SN-0042")
                await line.set_tester(voltage=230.4, current=1.25, result=1)
                await asyncio.sleep(warmup_s)
                if screenshot is not None:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    await opened[0].screenshot(path=str(screenshot), type="png")  # needs a page
                    print(f"screenshot: {screenshot}")
                first = line.collector.rss_kib()
                print(f"{'t (s)':>8} {'RSS (MiB)':>10} {'page updates':>13}")
                print(f"{0:8.0f} {first / 1024:10.1f} {await shown(opened):13d}")
                samples = [first]
                started = time.monotonic()
                step = min(30.0, max(duration_s / 10, 1.0))
                while (elapsed := time.monotonic() - started) < duration_s:
                    await asyncio.sleep(min(step, duration_s - elapsed))
                    samples.append(line.collector.rss_kib())
                    print(
                        f"{time.monotonic() - started:8.0f} {samples[-1] / 1024:10.1f} "
                        f"{await shown(opened):13d}",
                        flush=True,
                    )
                status = await line.collector.status()
        finally:
            broker.stop()
    live = status["http"]["live_pages"]
    print(
        f"pages {pages}, {duration_s:.0f} s after a {warmup_s:.0f} s warm-up: RSS "
        f"{first / 1024:.1f} MiB -> {samples[-1] / 1024:.1f} MiB "
        f"(change {(samples[-1] - first) / 1024:+.1f} MiB, max {max(samples) / 1024:.1f} MiB); "
        f"{live['events_sent_total']} events sent"
    )


async def shown(pages: list[Page]) -> int:
    """The first page's update count (0 with no page)."""
    return await updates(pages[0]) if pages else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--pages", type=int, default=1)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    asyncio.run(run(args.duration_s, args.warmup_s, args.pages, args.screenshot))


if __name__ == "__main__":
    main()
