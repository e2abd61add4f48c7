"""Start a server process for a test and wait until it answers — never a fixed sleep."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import httpx

from sandbox.fhir_server import free_port as free_port  # one choice of port for all


@dataclass(frozen=True)
class Started:
    """A server process and what it printed (standard output and error, to a file: a pipe
    that nobody reads while the server runs fills up and blocks a chatty server)."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode()


def wait_until_answers(url: str, started: Started, deadline_s: float = 30) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        if started.process.poll() is not None:
            code = started.process.returncode
            raise RuntimeError(f"process exited with {code}:\n{started.output()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling interval of a readiness probe, not synchronisation
    raise TimeoutError(f"{url} did not answer within {deadline_s}s")


@contextmanager
def running(command: Sequence[str], ready_url: str, env: dict[str, str]) -> Iterator[Started]:
    """The server for the block; its output stays readable after it (what a server prints
    on its way out, a buffer it flushes at exit, counts too). The file goes with the
    ``Started``."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read after the block: Started keeps it
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = Started(process, log)
    try:
        wait_until_answers(ready_url, started)
        yield started
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ask the process to end; kill it when it has not within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
