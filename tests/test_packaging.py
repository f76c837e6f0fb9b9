"""The wheel as pip users get it: license, metadata, package data, the command (issue #28 point 7).

The wheel is built from a copy of the sources in a temporary folder: building in the checkout
leaves a ``build/`` folder whose stale files a later wheel would pick up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: What setup.py needs to build the wheel, nothing else of the checkout.
SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "nni_prune_tuners")


def build_wheel(folder: Path) -> Path:
    """Build the wheel from a copy of the sources under ``folder``; return the wheel's path.

    ``--no-build-isolation`` uses this environment's setuptools (pinned in requirements.lock)
    rather than fetching one, so the build takes a second and works offline.
    """
    source = folder / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(folder / "dist"), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (folder / "dist").glob("nni_prune_tuners-*.whl")
    return wheel


def test_wheel_carries_license_metadata_and_package_data(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (info,) = {name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA")}
        metadata = HeaderParser().parsestr(archive.read(f"{info}/METADATA").decode("utf-8"))
        license_text = archive.read(f"{info}/licenses/LICENSE").decode("utf-8")
        entry_points = archive.read(f"{info}/entry_points.txt").decode("utf-8")
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    assert license_text.startswith("MIT License")
    assert "nni-prune-tuners authors" in license_text
    assert license_text == (REPO / "LICENSE").read_text(encoding="utf-8")
    assert metadata["Name"] == "nni-prune-tuners"
    assert "Requires-Dist" in metadata and any(
        value.startswith("torch") and 'extra == "trial"' in value
        for value in metadata.get_all("Requires-Dist", []))
    assert "nni-prune-tuners = nni_prune_tuners.__main__:main" in entry_points
    assert {"nni_prune_tuners/meta/prune_tpe.yml", "nni_prune_tuners/meta/prune_early_stop.yml",
            "nni_prune_tuners/py.typed", "nni_prune_tuners/trial/__init__.py"} <= names
    assert not any(name.startswith(("trials/", "tests/", "benchmarks/")) for name in names)
