"""How far `kit predict`'s probabilities are from `kit serve`'s and the export's, on one trained run.

    python benchmarks/predict_equality.py                      # the demo competition, the default road
    python benchmarks/predict_equality.py --spec specs/disaster.toml --split test --max-steps 60

`kit predict` reads the frozen lower blocks' states from the state cache, stored in fp16 by default
(`--frozen-states`), and runs the top blocks on them; `kit serve` and the exported model run the whole
model in fp32. This script trains a run (the default recipe, `--max-steps` steps) in a work folder,
predicts a split through `kit predict`, computes the same rows the way `kit serve` does (the loaded
run, no state cache), and prints the largest probability gap, the mean gap, and the rows whose label
at 0.5 differs. With `--frozen-states fp32` the gap is what the order of operations leaves.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.inputs.data import load_rows  # noqa: E402
from kit.inputs.spec import load_spec  # noqa: E402
from kit.runs.folder import load_run  # noqa: E402
from kit.workflows.predict import load_predictor  # noqa: E402


def kit(work, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, "-m", "kit", *map(str, args)], cwd=work, env=env, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "data" / "competition.toml"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--frozen-states", default="fp16", choices=["fp16", "fp32"])
    parser.add_argument("--work", default=None, help="Work folder (default: a temporary one).")
    options = parser.parse_args()
    work = Path(options.work or tempfile.mkdtemp(prefix="kit-equality-"))
    work.mkdir(parents=True, exist_ok=True)
    spec_path = Path(options.spec).resolve()
    common = ["--spec", spec_path, "--name", "equality", "--max-steps", options.max_steps,
              "--frozen-states", options.frozen_states]
    kit(work, "train", *common)
    for column in load_spec(spec_path).targets:      # the submission's other columns (seconds: TF-IDF)
        kit(work, "train", "--spec", spec_path, "--target", column)
    kit(work, "predict", "--spec", spec_path, "--run", "equality", "--split", options.split, "--out",
        work / "submission.csv")
    spec = load_spec(spec_path)
    run = load_run("equality", work / "runs")
    predicted = pd.read_csv(run.predictions(options.split), dtype={"id": str})
    predicted_probs = predicted[[f"p_{label}" for label in spec.labels]].to_numpy()
    model, _ = load_predictor(run, "auto", False)
    model.without_state_cache()                      # what kit serve does: the full fp32 pass
    rows, _ = load_rows(spec, options.split)
    served = model.predict(rows).probs
    gap = np.abs(np.round(served, 6) - predicted_probs)   # predictions-<split>.csv holds 6 decimals
    flipped = int((served.argmax(1) != predicted_probs.argmax(1)).sum())
    print(f"{len(rows)} rows of {options.split}, frozen states {options.frozen_states}: "
          f"max |kit predict - kit serve| = {gap.max():.2e}, mean {gap.mean():.2e}; "
          f"{flipped} row(s) with another label at 0.5 (work folder {work})")


if __name__ == "__main__":
    main()
