"""Winning recipes, scored where their weights were not fitted: an outer 20 % kept aside.

    python benchmarks/recipes.py --spec specs/disaster.toml
    python benchmarks/recipes.py --spec specs/medical.toml

Fold ensembles and blends are fitted on out-of-fold rows, so their OOF score flatters them. This
script keeps a stratified 20 % of the spec's training file aside (fixed seed, labels written to a
separate answers file), runs every `kit cv` on the other 80 % with the same folds, predicts the
outer rows (submissions under submissions/recipes/) as if they were a competition's test split, and scores each road's submission on them:

  tfidf, minilm      `kit cv --keep-models`, predicted by their fold ensembles
  llm full           the default recipe: `kit cv --keep-models`, then `kit train` on the 80 %
  llm folds          the LLM's 5 fold models, probabilities averaged
  llm merged         their LoRA weights averaged into one adapter
  blend              `kit blend llm minilm tfidf` (weights fitted on the OOF rows)
  (with --auto B: only `kit auto --budget B --write outer`: the road it picks, its printed honest
  score, and that submission's outer score)
  llm + pseudo       `kit train --pseudo blend:outer`: the blend's confident outer predictions
                     (their labels unused) added to the 80 %; with --pseudo-cv also `kit cv
                     --pseudo blend:outer` for its OOF score (fold k: the blend's fold-k members)

Binary tasks are decided at the threshold tuned on OOF rows (`--threshold oof`; the pseudo run,
which has no CV of its own, takes the LLM's). Each step is timed alone; finished steps are kept in
<work>/steps.json, so an interrupted run continues where it stopped. The derived CSVs live under
--work (default runs/recipes/), never in the repository.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.core.errors import KitError  # noqa: E402
from kit.core.files import atomic_write, write_json  # noqa: E402
from kit.inputs.data import labelled_rows, read_csv
from kit.inputs.spec import load_spec  # noqa: E402
from kit.workflows.score import score_file  # noqa: E402

OUTER = "outer"


def split_outer(spec, work, fraction, seed):
    """inner.csv (the 80 %), outer.csv (no label column) and outer-answers.csv (id + label)."""
    frame = read_csv(spec.train)
    inner, outer = train_test_split(frame, test_size=fraction, random_state=seed,
                                    stratify=frame[spec.label_column].astype(str))
    atomic_write(work / "inner.csv", lambda tmp: inner.to_csv(tmp, index=False))
    atomic_write(work / "outer.csv", lambda tmp: outer.drop(columns=[spec.label_column]).to_csv(tmp, index=False))
    answers = outer[[spec.id_column, spec.label_column]]
    atomic_write(work / "outer-answers.csv", lambda tmp: answers.to_csv(tmp, index=False))
    return len(inner), len(outer)


def sections(text, names):
    """The named [tables] of a TOML file, verbatim."""
    parts = re.split(r"(?m)^(?=\[)", text)
    return "".join(p for p in parts if re.match(r"\[(%s)\]" % "|".join(names), p))


def write_spec(spec, work, name):
    """The spec on the 80 %, with the outer rows as split `outer` and their labels as [answers]."""
    text = Path(spec.path).read_text(encoding="utf-8")
    head = (f'name = "{name}"\ntrain = "inner.csv"\n\n[splits]\n{OUTER} = "outer.csv"\n\n'
            f'[answers]\n{OUTER} = "outer-answers.csv"\n\n')
    path = work / "spec.toml"
    atomic_write(path, lambda tmp: Path(tmp).write_text(head + sections(text, ["columns", "task"]), encoding="utf-8"))
    return path


class Steps:
    """Runs kit commands one at a time, timed, remembering the finished ones in steps.json."""

    def __init__(self, work, spec_path, python):
        self.path, self.spec_path, self.python = work / "steps.json", spec_path, python
        self.done = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, key, *args):
        if key in self.done:
            print(f"[{key}] done before, {self.done[key]:.0f} s", flush=True)
            return self.done[key]
        argv = [self.python, "-m", "kit", args[0], "--spec", str(self.spec_path), *args[1:]]
        print(f"[{key}] {' '.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True)
        self.done[key] = time.perf_counter() - start
        write_json(self.path, self.done)
        return self.done[key]


def outer_labels(spec, path, answers):
    """(truth, predicted) label indices of a submission's rows, in the answers' order."""
    ids, truth = labelled_rows(spec, answers)
    predicted = dict(zip(*labelled_rows(spec, path)))      # a submission has the spec's id and label columns
    return np.asarray(truth), np.array([predicted[i] for i in ids])


def confusion_metric(metric, truth, predicted, k, samples):
    """The metric on each bootstrap sample of rows (rows: sample, columns: row indices), from
    confusion counts, so thousands of samples take a moment."""
    codes = (truth * k + predicted)[samples] + np.arange(len(samples))[:, None] * k * k
    confusion = np.bincount(codes.ravel(), minlength=len(samples) * k * k).reshape(len(samples), k, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    f1 = np.divide(2 * tp, confusion.sum(1) + confusion.sum(2), out=np.zeros(tp.shape), where=tp > 0)
    return {"f1": f1[:, -1], "macro_f1": f1.mean(1), "accuracy": tp.sum(1) / truth.size}[metric]


def paired_interval(metric, k, truth, predicted, reference, draws=2000, seed=0):
    """95 % bootstrap interval of (metric of predicted - metric of reference) over the same resampled rows."""
    samples = np.random.default_rng(seed).integers(0, truth.size, size=(draws, truth.size))
    difference = (confusion_metric(metric, truth, predicted, k, samples)
                  - confusion_metric(metric, truth, reference, k, samples))
    return np.percentile(difference, [2.5, 97.5])


def cv_oof(name):
    """(OOF score, tuned OOF score or None, tuned threshold or None) of a `kit cv` run."""
    scores = json.loads((ROOT / "runs" / name / "cv_scores.json").read_text())
    return scores[scores["metric"]], scores.get("tuned_score"), scores.get("tuned_threshold")


def blend_oof(name):
    summary = json.loads((ROOT / "runs" / name / "blend.json").read_text())
    return summary["blend"]["score"], summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--work", default="runs/recipes")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--outer", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the outer split")
    parser.add_argument("--pseudo-threshold", type=float, default=0.9)
    parser.add_argument("--pseudo-cv", action="store_true",
                        help="also cross-validate the pseudo-labelled LLM (its OOF score; one more LLM CV)")
    parser.add_argument("--auto", metavar="BUDGET", default=None,
                        help="run `kit auto --budget BUDGET` on the 80 %% instead, and score what it picks")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    if not spec.has_labels:
        raise KitError(f"{spec.path}: no [columns] label to keep an outer split of")
    name = f"{spec.name}-outer"
    work = (ROOT / args.work / spec.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n_inner, n_outer = split_outer(spec, work, args.outer, args.seed)
    spec_path = write_spec(spec, work, name)
    outer_spec = load_spec(spec_path)
    binary = len(outer_spec.labels) == 2
    print(f"{spec.name}: {n_inner} rows for kit cv, {n_outer} outer rows kept aside ({spec_path})", flush=True)

    steps = Steps(work, spec_path, sys.executable)
    # the submissions: outside runs/ (kit never writes a submission into a run folder), never committed
    submissions = ROOT / "submissions" / "recipes" / name
    submissions.mkdir(parents=True, exist_ok=True)
    if args.auto:
        return auto_on_outer(steps, outer_spec, work, args, n_outer)
    runs = {road: f"{name}-{road}" for road in ("tfidf", "minilm", "llm", "blend", "llm-pseudo")}
    folds = ["--folds", str(args.folds), "--fold-seed", "0", "--keep-models", "--no-baseline"]
    threshold = ["--threshold", "oof"] if binary else []

    def predict(key, run, models, extra=threshold):
        out = submissions / f"submit-{key}.csv"
        seconds = steps.run(f"predict {key}", "predict", "--split", OUTER, "--run", run, "--models", models,
                            "--out", str(out), *extra)
        return out, seconds

    rows = []   # (road, OOF score, outer submission, seconds, how)

    def oof_of(run):
        oof, tuned, _ = cv_oof(run)
        return tuned if binary and tuned is not None else oof

    cv_tfidf = steps.run("cv tfidf", "cv", "--model", "tfidf", "--name", runs["tfidf"], *folds)
    out, seconds = predict("tfidf", runs["tfidf"], "folds")
    rows.append(("TF-IDF + logistic regression (fold ensemble)", oof_of(runs["tfidf"]), out,
                 cv_tfidf + seconds, "kit cv + predict"))

    cv_minilm = steps.run("cv minilm", "cv", "--model", "minilm", "--lora-r", "0", "--lr", "5e-5",
                          "--batch-size", "32", "--name", runs["minilm"], *folds)
    out, seconds = predict("minilm", runs["minilm"], "folds")
    rows.append(("all-MiniLM-L6-v2 full fine-tune (fold ensemble)", oof_of(runs["minilm"]), out,
                 cv_minilm + seconds, "kit cv + predict"))

    cv_llm = steps.run("cv llm", "cv", "--name", runs["llm"], *folds)
    train_llm = steps.run("train llm", "train", "--name", runs["llm"])
    llm_oof = oof_of(runs["llm"])
    out, seconds = predict("llm-full", runs["llm"], "full")
    rows.append(("SmolLM2 default, trained on the 80 % (the single road)", llm_oof, out,
                 cv_llm + train_llm + seconds, "kit cv + train + predict"))
    out, seconds = predict("llm-merged", runs["llm"], "merged")
    rows.append(("SmolLM2 merged-fold adapter", llm_oof, out, cv_llm + seconds,
                 "kit cv + predict --models merged"))
    out, seconds = predict("llm-folds", runs["llm"], "folds")    # last: the blend reads these predictions
    rows.append((f"SmolLM2 fold ensemble ({args.folds} models)", llm_oof, out, cv_llm + seconds,
                 "kit cv + predict --models folds"))

    blend_out = submissions / "submit-blend.csv"
    blend_seconds = steps.run("blend", "blend", runs["llm"], runs["minilm"], runs["tfidf"], "--split", OUTER,
                              "--out", str(blend_out), "--name", runs["blend"])
    blend_score, summary = blend_oof(runs["blend"])
    weights = ", ".join(f"{m['run'].rsplit('-', 1)[-1]} {m['weight']:.2f}" for m in summary["runs"])
    rows.append((f"blend LLM + MiniLM + TF-IDF (weights {weights})", blend_score, blend_out,
                 blend_seconds, "on the three CVs above; OOF fitted on these rows"))

    pseudo_train = steps.run("train llm-pseudo", "train", "--name", runs["llm-pseudo"], "--pseudo",
                             f"{runs['blend']}:{OUTER}", "--pseudo-threshold", str(args.pseudo_threshold))
    llm_threshold = cv_oof(runs["llm"])[2]
    pseudo_threshold = ["--threshold", f"{llm_threshold:.6f}"] if binary and llm_threshold else []
    out, seconds = predict("llm-pseudo", runs["llm-pseudo"], "full", pseudo_threshold)
    pseudo_oof, how = None, "kit train --pseudo + predict"
    if args.pseudo_cv:      # its honest OOF: fold k pseudo-labelled by the blend's fold-k members
        seconds += steps.run("cv llm-pseudo", "cv", "--name", f"{runs['llm-pseudo']}-cv", "--pseudo",
                             f"{runs['blend']}:{OUTER}", "--pseudo-threshold", str(args.pseudo_threshold),
                             "--folds", str(args.folds), "--fold-seed", "0", "--no-baseline")
        pseudo_oof, how = oof_of(f"{runs['llm-pseudo']}-cv"), "kit cv --pseudo + kit train --pseudo + predict"
    rows.append((f"SmolLM2 + pseudo-labels from the blend (p >= {args.pseudo_threshold})", pseudo_oof,
                 out, pseudo_train + seconds, how))

    metric, answers, default = outer_spec.metric, str(work / "outer-answers.csv"), submissions / "submit-llm-full.csv"
    lines = [f"{spec.name}: {metric} on {n_outer} outer rows; every kit cv on the other {n_inner} "
             f"({args.folds} folds, fold seed 0)", "",
             f"| road | OOF {metric} | outer {metric} | outer - default run (95 % bootstrap) | wall |",
             "| --- | --- | --- | --- | --- |"]
    results = []
    truth, reference = outer_labels(outer_spec, default, answers)
    for road, oof, path, seconds, how in rows:
        outer = score_file(outer_spec, str(path), answers)[metric]
        low, high = paired_interval(metric, len(outer_spec.labels), truth, outer_labels(outer_spec, path, answers)[1],
                                    reference)
        results.append({"road": road, "oof": oof, "outer": outer, "vs_default_95": [low, high],
                        "seconds": seconds, "how": how, "submission": str(path)})
        shown = "-" if oof is None else f"{oof:.4f}"
        versus = "-" if path == default else f"{low:+.3f} to {high:+.3f}"
        lines.append(f"| {road} | {shown} | **{outer:.4f}** | {versus} | {seconds / 60:.1f} min ({how}) |")
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    write_json(work / "recipes.json", {"spec": spec.name, "metric": metric, "outer_rows": n_outer,
                                       "inner_rows": n_inner, "steps_seconds": steps.done, "rows": results})
    atomic_write(work / "recipes.md", lambda tmp: Path(tmp).write_text(table + "\n", encoding="utf-8"))


def auto_on_outer(steps, outer_spec, work, args, n_outer):
    """`kit auto` on the 80 %: its pick, the honest score it printed, and the pick's outer score."""
    out = ROOT / "submissions" / "recipes" / outer_spec.name / "submit-auto.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = steps.run(f"auto {args.auto}", "auto", "--budget", args.auto, "--folds", str(args.folds),
                        "--write", OUTER, "--out", str(out))
    table = json.loads((ROOT / "runs" / f"{outer_spec.name}-auto.json").read_text())
    candidates = [*table["results"], *([table["blend"]] if table["blend"] else [])]
    best = next(c for c in candidates if c["run"] == table["best"])
    metric = outer_spec.metric
    outer = score_file(outer_spec, str(out), str(work / "outer-answers.csv"))[metric]
    lines = [f"{outer_spec.name}: kit auto --budget {args.auto} ({args.folds} folds, {seconds / 60:.1f} min)", "",
             f"| road | honest {metric} (printed) | fitted on its OOF rows | outer {metric} ({n_outer} rows) "
             "| printed - outer |", "| --- | --- | --- | --- | --- |"]
    for c in candidates:
        mark = " (picked)" if c is best else ""
        shown = f"**{outer:.4f}**" if c is best else "-"
        gap = f"{c['honest'] - outer:+.4f}" if c is best else "-"
        lines.append(f"| {c['road']}{mark} | {c['honest']:.4f} | {c['fitted']:.4f} | {shown} | {gap} |")
    lines += [f"did not fit: {s['road']} (about {s['estimate'] / 60:.1f} min)" for s in table["skipped"]]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    write_json(work / "auto.json", {"budget": args.auto, "seconds": seconds, "picked": best["road"],
                                    "printed": best["honest"], "outer": outer, "table": table})
    atomic_write(work / "auto.md", lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except KitError as error:          # bad input: one line, exit 2, as the kit itself
        fail(error)
    except subprocess.CalledProcessError as error:
        fail(f"a kit command failed (exit {error.returncode}): {' '.join(map(str, error.cmd[1:]))}")
