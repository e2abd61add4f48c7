"""axe-core (Deque's accessibility engine) run in a page of the browser tests.

It checks what the issues ask of every screen — labels, keyboard use, contrast — and the
rest of WCAG 2.1 levels A and AA that a machine can check. It is installed by ``./dev test``
(``tests/browser/package.json``) and evaluated in the page by Playwright, which the pages'
Content-Security-Policy does not restrict.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from playwright.sync_api import Frame, Page

AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@cache
def _source() -> str:
    return AXE.read_text()


def violations(page: Page | Frame) -> list[str]:
    """Each WCAG 2.1 A/AA rule the page breaks: ``rule: element (what to fix)``."""
    page.evaluate(_source())
    result: dict[str, Any] = page.evaluate(
        """async (tags) => {
            const r = await axe.run(document, {runOnly: {type: 'tag', values: tags}});
            return {passed: r.passes.length, found: r.violations.flatMap(v => v.nodes.map(
                n => `${v.id}: ${n.target.join(' ')} (${n.failureSummary})`))};
        }""",
        WCAG_21_AA,
    )
    if not result["passed"]:  # e.g. an empty frame: nothing checked is no evidence
        raise AssertionError(f"axe-core found nothing to check at {page.url}")
    found: list[str] = result["found"]
    return found


def in_frame(page: Page, selector: str = "#app-frame") -> Frame:
    """The app as the EHR shows it: the document of its iframe."""
    handle = page.locator(selector).element_handle()
    frame = handle.content_frame() if handle else None
    if frame is None:
        raise AssertionError(f"no frame at {selector}")
    return frame


def contrast(page: Page | Frame, selector: str) -> float:
    """WCAG's contrast ratio of the first ``selector``'s text against the background it is
    drawn on (its nearest opaque one). axe-core passed a link as blue as its banner."""
    ratio: float = page.locator(selector).first.evaluate(
        """element => {
            const rgb = text => text.match(/[\\d.]+/g).map(Number);
            const luminance = ([r, g, b]) => {
                const linear = c =>
                    (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
                return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
            };
            let under = element, background = [255, 255, 255];
            while (under) {
                const colour = rgb(getComputedStyle(under).backgroundColor);
                if (colour.length < 4 || colour[3] > 0) { background = colour; break; }
                under = under.parentElement;
            }
            const [lighter, darker] = [luminance(rgb(getComputedStyle(element).color)),
                                       luminance(background)].sort((a, b) => b - a);
            return (lighter + 0.05) / (darker + 0.05);
        }"""
    )
    return ratio
