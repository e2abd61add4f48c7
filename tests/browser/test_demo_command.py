"""``kindreflex demo``: starts everything on localhost, prints the URLs, Ctrl-C stops it all.

Runs the real console command in a subprocess (its own ``.demo`` directory in a temporary
working directory), waits until it prints the URLs, checks that each answers, sends
SIGINT as Ctrl-C does (or SIGTERM, as ``kill`` does), and checks that the command exits
and leaves no process behind.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port

STARTUP_DEADLINE_S = 90.0


def _children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc; no extra packages)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


#: What a shell that runs a hospital's ``kindreflex serve`` exports, one of them unusable.
HOSPITAL_SHELL = {
    "KINDREFLEX_OUTBOUND_ALLOW": "ehr.az-gent.example",
    "KINDREFLEX_PUBLIC_URL": "https://kindreflex.az-gent.example",
    "KINDREFLEX_DATABASE_URL": "mysql://kindreflex@db.az-gent.example/kindreflex",
}


@pytest.mark.parametrize(
    ("stop", "shell"),
    [
        (signal.SIGINT, {}),  # Ctrl-C
        (signal.SIGTERM, {}),  # `kill` or a process manager
        (signal.SIGINT, HOSPITAL_SHELL),
    ],
    ids=["ctrl-c", "sigterm", "hospital-settings-in-the-shell"],
)
def test_demo_prints_the_urls_and_ctrl_c_stops_everything(
    tmp_path: Path, stop: signal.Signals, shell: dict[str, str]
) -> None:
    """With a hospital's settings in the shell too: the demo runs on its embedded defaults
    and names what it does not read. It read them, and refused to start on a database URL
    of another kind, or refused its own sandbox outside the allow-list (found by review)."""
    port = free_port()
    kindreflex = Path(sys.executable).parent / "kindreflex"
    demo = subprocess.Popen(
        [str(kindreflex), "demo", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **shell},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(demo.stdout, lines), daemon=True).start()
    output: list[str] = []
    started: set[int] = set()
    try:
        give_up = time.monotonic() + STARTUP_DEADLINE_S
        while not any("Ctrl-C stops everything" in line for line in output):
            assert demo.poll() is None, "".join(output)
            assert time.monotonic() < give_up, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        text = "".join(output)
        if shell:
            ignored = re.search(r'"ignored": "([^"]*)"', text)
            assert ignored is not None, text
            assert set(shell) <= set(ignored.group(1).split(", ")), text
        ehr = re.search(r"sandbox EHR \(start here\):\s+(\S+)", text)
        assert ehr is not None, text
        assert text.index("sandbox EHR") < text.index("/cds-services"), "the EHR page comes first"
        assert httpx.get(ehr.group(1), timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        started = _children_of(demo.pid)
        assert started, "the demo runs the FHIR server as a child process"

        demo.send_signal(stop)
        assert demo.wait(timeout=30) == 0
    finally:
        if demo.poll() is None:  # failed before the demo stopped: what it started, too
            started |= _children_of(demo.pid)
            demo.kill()
            demo.wait()
        left_running = [pid for pid in started if _alive(pid)]
        for pid in left_running:  # a failed run leaves nothing on the machine either
            os.kill(pid, signal.SIGKILL)
    assert left_running == []
    for url in (ehr.group(1), f"http://127.0.0.1:{port}/healthz"):
        try:
            httpx.get(url, timeout=2)
        except httpx.TransportError:
            continue
        raise AssertionError(f"{url} still answers after Ctrl-C")
