"""streamrec runs installed from its wheel, away from the source tree.

The wheel is built from a copy of the repo and installed into a fresh venv that holds
nothing but the wheel; third-party dependencies come from the test venv through a ``.pth``
line (so torch is not downloaded), which adds that directory to ``sys.path`` without
running its ``.pth`` files, so the editable install of the repo stays out. Every command
runs with its working directory in ``tmp_path`` and no ``PYTHONPATH``: if anything still
came from /work/main, the import-origin checks below would say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

PACKAGES = ("cli", "streamrec", "flows", "online_models", "serving", "loadtest")
SUB_PACKAGES = (
    "online_models/model",
    "online_models/learner",
    "online_models/registry",
    "online_models/drift",
    "online_models/alerts",
    "online_models/finetune",
    "online_models/offline",
    "loadtest/bench",
)
# What a copy of the repo leaves behind: local state, caches and earlier builds.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    ".streamrec", "reports",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Installed:
    wheel: Path
    source: Path
    venv: Path
    site_packages: Path
    workdir: Path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A command of the installed venv, run outside the repo with a clean environment."""
        clean = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("STREAMREC_", "PYTHON")) and key != "VIRTUAL_ENV"
        }
        return subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=self.workdir,
            env=clean | env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def _check(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The repo's wheel, built and installed into a venv of its own."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: an in-tree build would write build/ and egg-info into the shared tree.
    source = base / "src"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_COPIED)
    dist = base / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(dist), "."], cwd=source, check=True, capture_output=True)
    (wheel,) = dist.glob("streamrec-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps"]
    subprocess.run([*install, "--no-index", str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Written after the install, so pip never sees the repo's editable streamrec.
    (Path(purelib) / "streamrec_test_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    workdir = base / "elsewhere"
    workdir.mkdir()
    return Installed(wheel, source, venv, Path(purelib), workdir)


def test_wheel_holds_every_package_its_data_and_no_tests(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for package in (*PACKAGES, *SUB_PACKAGES):
        assert f"{package}/__init__.py" in names, f"{package} is not in the wheel"
    assert "loadtest/default_slo.yaml" in names
    # Every module of the source tree ships, not only those of the packages named above.
    modules = {
        path.relative_to(installed.source).as_posix()
        for package in PACKAGES
        for path in (installed.source / package).rglob("*.py")
    }
    assert modules - names == set()
    assert not [name for name in names if name.startswith("tests/")]
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert (
        "streamrec = cli.app:main" in zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    )


def test_installed_packages_are_imported_from_the_venv_not_the_repo(
    installed: Installed,
) -> None:
    script = (
        "import sys, cli, streamrec, flows, online_models, serving, loadtest\n"
        "from cli.loadtest import DEFAULT_SLO_FILE\n"
        "mods = (cli, streamrec, flows, online_models, serving, loadtest)\n"
        "print('\\n'.join([m.__file__ for m in mods] + [str(DEFAULT_SLO_FILE)]))\n"
        "print('\\n'.join(sys.path))\n"
    )
    lines = _check(installed.run("python", "-c", script)).splitlines()
    count = len(PACKAGES)
    origins, default_slo, path = lines[:count], lines[count], lines[count + 1 :]
    for package, origin in zip(PACKAGES, origins, strict=True):
        assert Path(origin) == installed.site_packages / package / "__init__.py"
    assert Path(default_slo) == installed.site_packages / "loadtest" / "default_slo.yaml"
    assert Path(default_slo).is_file()
    # Only the venv's site-packages holds streamrec's packages; the repo is not on the path.
    holders = {
        entry
        for entry in path
        for package in PACKAGES
        if (Path(entry or installed.workdir) / package / "__init__.py").is_file()
    }
    assert holders == {str(installed.site_packages)}
    assert str(REPO_ROOT) not in path


def test_every_installed_module_imports_outside_the_repo(installed: Installed) -> None:
    script = (
        "import importlib, pkgutil\n"
        f"for top in {PACKAGES!r}:\n"
        "    package = importlib.import_module(top)\n"
        "    for info in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        if not info.name.endswith('.__main__'):\n"
        "            module = importlib.import_module(info.name)\n"
        f"            assert module.__file__.startswith({str(installed.site_packages)!r})\n"
    )
    _check(installed.run("python", "-c", script))


def test_installed_command_reports_and_follows_the_data_dir(installed: Installed) -> None:
    assert "Usage: streamrec" in _check(installed.run("streamrec", "--help"))
    default = orjson.loads(_check(installed.run("streamrec", "config")))
    assert default["data_dir"] == "../shared/data/yoochoose-sample"
    chosen = installed.run("streamrec", "config", STREAMREC_DATA_DIR="/some/path")
    assert orjson.loads(_check(chosen))["data_dir"] == "/some/path"


def test_installed_command_reads_events_from_streamrec_data_dir(installed: Installed) -> None:
    sample = installed.workdir / "tiny-sample"
    sample.mkdir()
    (sample / "yoochoose-clicks.dat").write_text(
        "1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,0\n"
        "2,2014-04-07T13:56:37.614Z,214662742,0\n"
    )
    (sample / "yoochoose-buys.dat").write_text("1,2014-04-07T10:55:00.000Z,214536500,12462,1\n")
    done = installed.run(
        "streamrec", "bench", "events", "--rounds", "1", STREAMREC_DATA_DIR=str(sample)
    )
    report = orjson.loads(_check(done))
    assert report["events"] == report["valid"] == 4


def test_installed_command_explains_a_missing_data_dir(installed: Installed) -> None:
    # The default (../shared/...) does not exist from the working directory in tmp_path.
    done = installed.run("streamrec", "replay")
    assert done.returncode == 2
    assert "../shared/data/yoochoose-sample" in done.stderr
    assert "STREAMREC_DATA_DIR" in done.stderr
    assert "Traceback" not in done.stderr
