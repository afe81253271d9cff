"""The package's shape: its layers (import-linter), light verbs that never import torch, and the
command table `kit --help` lists without importing the verbs."""
import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kit.commands.main import VERBS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")


def test_the_layers_contract_holds():
    """.importlinter: every package imports only the packages below it, and no package's
    modules import each other in a loop."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def _imported(args, cwd):
    """The top-level modules `python -X importtime -m kit ARGS` imported, and its exit code."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "kit", *args], cwd=cwd, capture_output=True,
                            text=True, env={"PATH": "", "HOME": str(cwd), "PYTHONPATH": str(ROOT)})
    names = {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \| +([\w.]+)$", result.stderr, re.M)}
    return names, result.returncode


@pytest.fixture
def demo(tmp_path):
    """The demo competition's spec and CSVs in a folder of their own, with a submission."""
    for path in (ROOT / "data").glob("*.*"):
        if path.suffix in (".toml", ".csv"):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


@pytest.mark.parametrize("args", [["--help"], ["check", "--spec", "competition.toml"], ["runs"], ["report", "--help"],
                                  ["score", "--help"], ["report", "--spec", "competition.toml", "--out", "r.html"]])
def test_light_verbs_never_import_torch(demo, args):
    names, _ = _imported(args, demo)
    assert "kit.commands.main" in names or "kit" in names
    assert not [m for m in names if m.split(".")[0] in HEAVY]


def test_score_never_imports_torch(demo):
    """A real `kit score` (the labelled copy scored against itself: every column it has)."""
    names, code = _imported(["score", "--spec", "competition.toml", "--pred", "test_labels.csv", "--split", "test"],
                            demo)
    assert code == 0
    assert not [m for m in names if m.split(".")[0] in HEAVY]


def test_kit_help_lists_each_verb_with_its_own_help():
    """The table `kit --help` prints without importing a verb is each command's own first line."""
    for name, (module, function, short) in VERBS.items():
        command = getattr(importlib.import_module(module), function)
        assert command.name == name
        assert short == command.help.strip().splitlines()[0], name


def test_no_kit_import_hides_inside_a_function():
    """Imports of kit's own modules sit at the top of a module, where the layers contract sees
    them; inside a function they would only hide a cycle."""
    hidden = []
    for path in (ROOT / "kit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    from_kit = isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("kit"))
                    import_kit = isinstance(inner, ast.Import) and any(a.name.split(".")[0] == "kit" for a in inner.names)
                    if from_kit or import_kit:
                        hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not hidden


@pytest.mark.parametrize("args", [["--debug", "check", "--spec", "missing.toml"],
                                  ["check", "--spec", "missing.toml", "--debug"]])
def test_debug_shows_the_traceback_before_or_after_the_verb(tmp_path, monkeypatch, args):
    from click.testing import CliRunner

    from kit.commands.main import main
    from kit.core.errors import KitError
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, KitError) and "missing.toml" in str(result.exception)
    quiet = CliRunner().invoke(main, ["check", "--spec", "missing.toml"])
    assert quiet.exit_code == 2 and quiet.output.startswith("error: ")


def test_distillation_temperature_is_kd_temperature_and_the_old_name_a_hidden_alias():
    from click.testing import CliRunner

    from kit.commands.fit import train
    page = CliRunner().invoke(train, ["--help"]).output
    assert "--kd-temperature" in page and "--temperature" not in page.replace("--kd-temperature", "")
    option = next(p for p in train.params if p.name == "temperature")
    assert option.opts == ["--kd-temperature", "--temperature"]
