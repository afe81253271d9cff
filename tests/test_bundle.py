"""Competition day: `kit bundle` writes one folder that installs offline in a fresh environment (the
package index off, the base libraries from a provided environment standing in for the notebook's
image) and writes the submission from a copy of itself in another folder."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pandas as pd
import pytest
from cli import ok, one_line_error

from kit.core.errors import KitError
from kit.inputs.spec import load_spec
from kit.outputs import bundle as bundling
from kit.outputs.bundle import lacking, read_freeze

ROOT = Path(__file__).resolve().parent.parent
LEFT_OUT = ("click", "tqdm")            # what the stand-in image lacks


def this_environment_freeze(path, without=()):
    """`pip freeze` of this environment (the stand-in image), less some packages."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    kept = [line for line in frozen.splitlines() if line.split("==")[0].lower() not in without]
    path.write_text("\n".join(kept) + "\n")
    return path


def test_a_freeze_file_is_read_and_what_the_image_lacks_is_walked(tmp_path):
    image = read_freeze(this_environment_freeze(tmp_path / "image.txt", without=LEFT_OUT))
    assert "click" not in image and image["pandas"]
    assert [name for name, _ in lacking(image, ["click>=8", "pandas", "torch>=2"])] == ["click"]
    assert lacking(None, ["torch>=2.6"]) == []           # the image's, with or without a freeze
    with pytest.raises(KitError, match=r"the image's torch 2.4.1\+cu121 is outside the kit's supported range"):
        lacking({"torch": "2.4.1+cu121"}, ["torch>=2.6.0,<3"])
    # an image version outside the requirement is shipped, with what it requires in turn
    image["jinja2"] = "2.0"
    image.pop("markupsafe")
    assert [name for name, _ in lacking(image, ["jinja2>=3"])] == ["jinja2", "markupsafe"]
    (tmp_path / "bad.txt").write_text("numpy>=2\n")
    with pytest.raises(KitError, match="line 1 'numpy>=2' is not NAME==VERSION"):
        read_freeze(tmp_path / "bad.txt")


def fresh_environment(path):
    """A new virtual environment whose base libraries come from this one (as a notebook's image
    provides them), without the kit: the path of this environment's site-packages, not its .pth files."""
    venv.create(path, with_pip=True, symlinks=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_bundle_installs_offline_and_writes_the_submission_from_anywhere(tmp_path, monkeypatch):
    competition = tmp_path / "competition"
    shutil.copytree(ROOT / "data", competition, ignore=shutil.ignore_patterns("prepared", "*.py"))
    monkeypatch.chdir(tmp_path)
    spec = competition / "competition.toml"
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "main")
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "fast", "--seed", "1")
    ok("train", "--spec", spec, "--target", "Keywords", "--name", "keywords")
    # the stand-in image has every library the kit needs, but not the kit: no wheel to download
    image = this_environment_freeze(tmp_path / "image.txt", without=("competition-kit",))
    before = sorted(p.name for p in ROOT.iterdir())
    said = ok("bundle", "--spec", spec, "--run", "main", "--target-run", "Keywords=keywords", "--threshold", "0.5",
              "--fallback", "fast", "--image", image, "--out", "upload")
    assert "bundle upload: 1 wheels, runs main, keywords, fast" in said
    assert sorted(p.name for p in ROOT.iterdir()) == before          # the wheel is built outside the checkout
    manifest = json.loads((tmp_path / "upload" / "kit_bundle.json").read_text())
    assert [w.split("-")[0] for w in manifest["wheels"]] == ["competition_kit"]
    assert manifest["predict"] == ["--models", "auto", "--threshold", "0.5", "--run-name", "main",
                                   "--target-run", "Keywords=keywords"]
    assert manifest["fallback"] == "fast" and manifest["one_process"] is True      # keywords: one process
    assert json.loads((tmp_path / "upload" / "notebook.ipynb").read_text())["cells"][0]["cell_type"] == "code"
    # the notebook: the bundle mounted read-only elsewhere, the data in its own folder, no package index
    mounted = tmp_path / "input" / "upload"
    shutil.copytree(tmp_path / "upload", mounted)
    for path in [*mounted.rglob("*"), mounted]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    python = fresh_environment(tmp_path / "image-env")
    working = tmp_path / "working"
    working.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "KIT_", "PYTHON"))}

    def notebook(*extra):
        result = subprocess.run([str(python), str(mounted / "run.py"), "--data", str(competition), "--out",
                                 str(working / "submission.csv"), "--work", str(working), *extra],
                                cwd=working, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    said = notebook()
    assert "bundle: wrote" in said and "rows decided by a fallback run: 0" in said
    assert "bundle: warning" not in said            # every requirement of the kit met by image and bundle
    where = subprocess.run([str(python), "-c", "import kit; print(kit.__file__)"], capture_output=True, text=True)
    assert "image-env" in where.stdout                              # the kit from the bundle's wheel
    submission, sample = pd.read_csv(working / "submission.csv"), pd.read_csv(competition / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns) and submission["uuid"].tolist() == sample["uuid"].tolist()
    assert "valid for split test" in ok("check", "--spec", spec, "--submission", working / "submission.csv")
    stats = json.loads((working / "runs" / "main" / "predict-test.json").read_text())
    assert "fallback_rows" not in stats and stats["rows"] == len(sample)
    # a budget spent before prediction starts: every row by the fallback, the submission still whole
    said = notebook("--no-install", "--time-budget", "5s")
    assert f"rows decided by a fallback run: {len(sample)}" in said
    assert "valid for split test" in ok("check", "--spec", spec, "--submission", working / "submission.csv")
    for path in [*mounted.rglob("*"), mounted]:                     # let pytest clean up
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_bundle_refusals_are_one_line(tmp_path, monkeypatch, toy):
    monkeypatch.chdir(tmp_path)
    ok("train", "--spec", toy, "--model", "tfidf", "--name", "fast")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert "holds no kit_bundle.json" in one_line_error("bundle", "--spec", toy, "--run", "fast", "--out", "mine")
    assert "one run of the label" in one_line_error("bundle", "--spec", toy, "--run", "fast", "--run", "fast",
                                                   "--out", "b")
    (tmp_path / "image.txt").write_text("torch 2.6\n")
    assert "is not NAME==VERSION" in one_line_error("bundle", "--spec", toy, "--run", "fast", "--image", "image.txt",
                                                    "--out", "b")
    assert "is the label's run" in one_line_error("bundle", "--spec", toy, "--run", "fast", "--fallback", "fast",
                                                  "--second-pass", "fast", "--out", "b")
    real = bundling._version
    monkeypatch.setattr(bundling, "_version", lambda package: None if package == "setuptools" else real(package))
    assert "pip install 'setuptools>=70.1'" in one_line_error("bundle", "--spec", toy, "--run", "fast", "--out", "b")
    assert not (tmp_path / "b").exists()


def test_run_py_warns_of_the_kits_unmet_requirements_only(monkeypatch):
    spec = importlib.util.spec_from_file_location("bundle_run", ROOT / "kit" / "outputs" / "templates" / "bundle_run.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    checked = ("tensorflow 2.19.0 has requirement numpy<2.2, but you have numpy 2.4.6.\n"
               "competition-kit 0.1.0 requires gguf, which is not installed.\n"
               "competition-kit 0.1.0 has requirement pandas>=2.3.3, but you have pandas 2.2.0.\n")
    monkeypatch.setattr(entry.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, checked, ""))
    assert entry.unmet_requirements() == ["competition-kit 0.1.0 requires gguf, which is not installed.",
                                          "competition-kit 0.1.0 has requirement pandas>=2.3.3, but you have pandas 2.2.0."]


def test_two_data_files_with_one_name_are_refused(toy):
    bundling._check_file_names(load_spec(toy))                  # the toy's own files: all names differ
    (toy.parent / "more").mkdir()
    (toy.parent / "more" / "train.csv").write_text("tweet,sentiment\ncats again,1\ndogs again,0\n")
    toy.write_text(toy.read_text() + '[[extra]]\nfile = "more/train.csv"\nlabel = "sentiment"\ninput = "{tweet}"\n')
    with pytest.raises(KitError, match="share the name 'train.csv'"):
        bundling._check_file_names(load_spec(toy))
