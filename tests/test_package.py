"""The package: requirements.txt's pins and the lowest tested versions inside pyproject.toml's
ranges, `kit --version`, the wheel's contents, and the one-line error of a verb whose optional extra
is not installed."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import kit
from kit.commands import main as main_module
from kit.commands.main import main

ROOT = Path(__file__).resolve().parent.parent


def _project_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        listed += [r for r in requirements if not r.startswith("competition-kit")]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, listed)}


def _pinned(path):
    """{name: version} of a requirements file's == pins."""
    return {canonicalize_name(r.name): next(iter(r.specifier)).version
            for r in map(Requirement, _pins_lines(path)) if str(r.specifier).startswith("==")}


def _pins_lines(path):
    return [line.split("#")[0].strip() for line in (ROOT / path).read_text().splitlines() if line.split("#")[0].strip()]


def test_every_pin_and_every_lowest_version_is_inside_the_packages_range():
    ranges = _project_requirements()
    pinned, lowest = _pinned("requirements.txt"), _pinned("requirements-lowest.txt")
    assert set(ranges) == {canonicalize_name(Requirement(line).name) for line in _pins_lines("requirements.txt")}
    for name, version in pinned.items():
        assert ranges[name].contains(version), f"{name}=={version} is outside pyproject's {ranges[name]}"
    for name, version in lowest.items():          # the lowest tested version is the range's lower bound
        assert ranges[name].contains(version) and f">={version}" in str(ranges[name]).split(","), name
        assert pinned[name] != version            # and another version than the newest tested


def test_version_is_printed_by_kit_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"kit {kit.__version__}"


def test_a_verb_whose_extra_is_missing_says_how_to_install_it(monkeypatch):
    def no_fastapi(name):
        raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
    monkeypatch.setattr(main_module.importlib, "import_module", no_fastapi)
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: kit serve needs fastapi, which is not installed: "
                                     "pip install 'competition-kit[serve]' (in a checkout: pip install -r requirements.txt)")


def test_the_wheel_holds_the_package_its_templates_and_the_kit_command(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("competition_kit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "kit/__main__.py" in names and "kit/outputs/templates/report.html.j2" in names
    assert not any(name.startswith(("tests/", "runs/", "data/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kit = kit.commands.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
