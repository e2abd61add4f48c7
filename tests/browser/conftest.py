"""Playwright driving Debian's Chromium (never a downloaded browser), and the demo stack.

Chromium starts with a fresh user-data-dir per module and the flags that work on these
machines (see /work/shared/tooling.md). The stack is what ``kindreflex demo`` runs: the
sandbox EHR (sekmet, SMART authorization server, FHIR facade, EHR page on ``localhost``)
and our app (on ``127.0.0.1``, a different site, as in a hospital).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Playwright, expect, sync_playwright

from service.demo import DemoStack, demo_stack, serving
from tests.support.processes import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    port = free_port()
    with (
        demo_stack(port, data_dir=tmp_path_factory.mktemp("demo")) as running,
        serving(running.app, port),
    ):
        yield running


@pytest.fixture
def browser(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh Chromium profile for each test; closed (no process left) afterwards."""
    context: Any = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_FLAGS,
        locale="nl-BE",
    )
    context.set_default_timeout(15_000)
    # expect() does not take the context's timeout: its own is 5 s, short for a loaded
    # machine's launch or save
    expect.set_options(timeout=15_000)
    try:
        yield context
    finally:
        context.close()
