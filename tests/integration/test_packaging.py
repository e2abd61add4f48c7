"""The service image's wheel (``deploy/Dockerfile``) carries every file the service reads.

No Docker engine runs here, so the image itself is not built; its build stage is: the
wheel is made from exactly what that stage copies, as pip makes it there. A template, a
message catalogue or a migration missing from the package data would pass every other
test (they run from the source tree) and break only in the hospital.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def build_stage_sources() -> list[str]:
    """What the Dockerfile's build stage copies into /src before ``pip wheel``."""
    build_stage = DOCKERFILE.read_text().split("FROM ")[1]
    return [
        name
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", build_stage, flags=re.MULTILINE)
        for name in line.split()
    ]


def test_the_wheel_of_the_image_holds_every_module_template_catalogue_and_migration(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    no_bytecode = shutil.ignore_patterns("__pycache__")
    for name in build_stage_sources():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=no_bytecode)
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("kindreflex_ed-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    needed = {
        path.relative_to(source).as_posix()
        for package in ("service", "smart_app", "sandbox")
        for path in (source / package).rglob("*")
        if path.is_file() and path.suffix != ".md"
    }
    assert needed, "the build stage copies no package"
    assert needed - packaged == set()
    assert {"service/locales/fr/cds.po", "service/db/migrations/script.py.mako"} <= packaged
