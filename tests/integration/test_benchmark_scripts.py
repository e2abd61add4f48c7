"""The benchmark scripts still run and report (their figures are read by people, not
asserted: speed is measured, never timed in a test). A small run of the CDS benchmark also
checks what it must show whatever the machine: a warning card, no FHIR request per hook
call when the prefetch is complete, and one per nurse save."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cds_benchmark_runs_and_needs_no_fhir_request_with_full_prefetch() -> None:
    result = subprocess.run(
        [sys.executable, "tests/bench/cds_hook.py", "--requests", "100", "--warmup", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = result.stdout
    shown = (
        "bare FastAPI",
        "JWT check off",
        "JWT RS384",
        "JWT ES384",
        "CPU budget",
        "bare FastAPI + PyJWT RS384",
        "for planning, against the bare endpoint checking",
    )
    for line in shown:
        assert line in report
    assert "FHIR requests per hook call: 0.00" in report
    assert "FHIR requests per nurse save: 1.00" in report
    assert "card returned: warning" in report
