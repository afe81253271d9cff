#!/usr/bin/env python3
"""Write the competition's submission from this kit bundle, offline.

    python run.py --data /kaggle/input/COMPETITION [--out /kaggle/working/submission.csv]
                  [--models-dir /kaggle/input/MODEL] [--time-budget 8h --fallback RUN [--second-pass RUN]]

1. installs the bundle's wheels with the package index off (pip install --no-index --no-deps: the
   image's own torch and libraries stay as they are);
2. copies the runs into the working folder (the input folder is read-only);
3. runs `kit predict` with the options the bundle was made with, reading the spec's data files from
   --data by their names (KIT_DATA_DIR) and a moved base model from --models-dir (KIT_MODEL_DIRS);
4. prints what was written and how long each stage took, against the budget when one is given.
"""
import argparse
import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def offline_pip_env():
    """pip with the package index off and the machine's own pip configuration ignored."""
    return dict(os.environ, PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")


def install():
    wheels = sorted(str(p) for p in (HERE / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *wheels],
                   env=offline_pip_env(), check=True)
    importlib.invalidate_caches()


def unmet_requirements():
    """pip check's lines about the kit: what neither the image nor the bundle provides (a bundle made
    against another image's freeze). The image's own conflicts are not the kit's and are left out."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], env=offline_pip_env(), capture_output=True,
                            text=True)
    return [line for line in result.stdout.splitlines() if line.lower().startswith("competition-kit ")]


def seconds_of(text):
    """--time-budget as kit reads it: 8h, 30m, 90s, or a number of minutes (the kit is not importable
    before install() has run, so this script reads it itself)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        sys.exit(f"error: --time-budget {text!r}: give a time such as 8h, 30m or 90s")
    return float(match.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600, None: 60}[match.group(2)]


def gpu_count():
    """The GPUs the image's torch sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def copy_runs(manifest, runs):
    """The bundle's runs into the working folder, writable (the input folder's files are read-only,
    and a copy keeps their modes: prediction writes its progress and predictions into the run)."""
    for name in manifest["runs"]:
        if not (runs / name).is_dir():
            shutil.copytree(HERE / "runs" / name, runs / name, copy_function=shutil.copyfile)
            for path in [runs / name, *(runs / name).rglob("*")]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR | (stat.S_IXUSR if path.is_dir() else 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the folder of the competition's files (train.csv, test.csv)")
    parser.add_argument("--out", default="submission.csv", help="the submission to write")
    parser.add_argument("--work", default=".", help="a writable folder for the runs' copies and caches")
    parser.add_argument("--models-dir", default="", help="an uploaded base model's folder, or the folder holding it")
    parser.add_argument("--split", default="test", help="the spec's split to predict")
    parser.add_argument("--time-budget", default=None, help="for the whole script: 8h, 30m (see kit predict --help)")
    parser.add_argument("--fallback", default=None, help="with --time-budget: a run of the bundle for the rows left")
    parser.add_argument("--second-pass", default=None,
                        help="with --time-budget: a run of the bundle that re-scores the least certain rows with the time left")
    parser.add_argument("--no-install", action="store_true", help="the bundle's wheels are installed already")
    args = parser.parse_args()
    if args.second_pass and not args.time_budget:
        sys.exit("error: --second-pass spends the time a --time-budget leaves; give --time-budget too")
    started = time.monotonic()
    manifest = json.loads((HERE / "kit_bundle.json").read_text())
    stages = []
    if not args.no_install:
        install()
        for line in unmet_requirements():
            print(f"bundle: warning: {line} (make the bundle with kit bundle --image FILE, FILE this notebook's "
                  "`pip freeze`)", flush=True)
    stages.append(("install", time.monotonic() - started))
    work = Path(args.work).resolve()
    runs = work / "runs"
    copy_runs(manifest, runs)
    stages.append(("copy runs", time.monotonic() - started - sum(s for _, s in stages)))
    folders = [args.data] + ([str(HERE / "data")] if (HERE / "data").is_dir() else [])
    env = dict(os.environ, KIT_DATA_DIR=os.pathsep.join(folders), TQDM_DISABLE="1")
    if args.models_dir:
        env["KIT_MODEL_DIRS"] = args.models_dir
    out = Path(args.out).resolve()
    launch = [sys.executable, "-m", "kit"]
    gpus = gpu_count()
    # one predicting process per GPU (kit predict shards the rows), unless a column is written in one process
    if gpus > 1 and not args.time_budget and not manifest.get("one_process"):
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "kit"]
    command = [*launch, "predict", "--spec", str(HERE / manifest["spec"]), "--split", args.split,
               "--out", str(out), "--runs-dir", str(runs), *manifest["predict"]]
    budget = None
    if args.time_budget:
        budget = seconds_of(args.time_budget)
        left = max(1.0, budget - (time.monotonic() - started))
        fallback = args.fallback or manifest.get("fallback")
        if fallback is None:
            sys.exit("error: --time-budget needs --fallback RUN (one of the bundle's runs: "
                     f"{', '.join(manifest['runs'])}), or a bundle made with kit bundle --fallback")
        command += ["--time-budget", f"{left:.0f}s", "--fallback", fallback]
        second = args.second_pass or manifest.get("second_pass")
        if second:
            command += ["--second-pass", second]
    print("bundle: " + " ".join(command[1:]), flush=True)
    subprocess.run(command, env=env, cwd=work, check=True)
    stages.append(("predict", time.monotonic() - started - sum(s for _, s in stages)))
    report(manifest, runs, args.split, out, stages, budget)


def report(manifest, runs, split, out, stages, budget):
    """What was written, each stage's time (against the budget), the rows a fallback decided."""
    rows = sum(1 for _ in out.open(encoding="utf-8")) - 1
    print(f"bundle: wrote {out} ({rows} rows)")
    for name, seconds in stages:
        print(f"  {name:<10} {seconds:8.1f} s")
    total = sum(s for _, s in stages)
    print(f"  {'total':<10} {total:8.1f} s" + (f" of a {budget:.0f} s budget" if budget else ""))
    stats = runs / manifest["runs"][0] / f"predict-{split}.json"
    if stats.is_file():
        figures = json.loads(stats.read_text())
        print(f"  rows decided by a fallback run: {figures.get('fallback_rows', 0)}")
        if "second_pass_run" in figures:
            print(f"  rows re-scored by the second pass ({figures['second_pass_run']}): {figures['second_pass_rows']}")


if __name__ == "__main__":
    main()
