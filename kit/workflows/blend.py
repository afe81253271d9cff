"""`kit blend`: a weighted average of several runs' probabilities, weights fitted on their OOF rows.

Runs blend only when their OOF rows come from the same folds (same ids in the same order, the
same fold per row, the same fold settings) and the same spec: otherwise each row's OOF
probabilities would come from models that saw different rows, and the fitted weights would
mean nothing. The weights are non-negative and sum to 1 (a point of the simplex), so the blend
is itself a probability per label. A blend is written as a folder under runs/ with the same
oof.csv / predictions-<split>.csv columns as a run, so it can be blended again.
"""
import json
import time
from pathlib import Path

import numpy as np

from kit.core.errors import KitError
from kit.core.files import atomic_write, write_json
from kit.core.hashing import fingerprint
from kit.evaluation.blending import combine, evaluate, fit_weights, nested_blend
from kit.inputs import submit
from kit.inputs.data import id_key, load_rows, read_csv
from kit.models.base import Prediction
from kit.runs.folder import CONFIG, RUNS, Run, _spec_matches, check_run_name, check_trained_on, load_run, read_config
from kit.tasks.columns import label_column, predicted_columns
from kit.workflows.predict import SUBMISSION, ColumnResult, build_submission, find_run, predict_column

FOLD_SETTINGS = ("folds", "holdout", "fold_seed")


# -- reading and checking the runs --------------------------------------------------------------

def _cv_config(run):
    if not run.cv_scores.is_file() or not run.oof.is_file():
        raise KitError(f"run {run.name}: no OOF predictions ({run.oof}); run `python -m kit cv` with its settings first")
    try:
        return json.loads(run.cv_scores.read_text()).get("config") or {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KitError(f"{run.cv_scores}: unreadable: {error}") from None


def _oof(run, column):
    """(ids as written, truth, outputs, fold) of a run's oof.csv (outputs: a probability per
    label, or a number task's number)."""
    frame = read_csv(run.oof)
    columns = ["id", *column.truth_columns, "fold", *column.output_columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{run.oof}: missing column(s) {missing}; run `python -m kit cv` again with its settings")
    return (frame["id"].tolist(), column.truth(frame, run.oof),
            _outputs(frame, column), frame["fold"].astype(int).to_numpy())


def _outputs(frame, column):
    return frame[column.output_columns].astype(float).to_numpy()


def _fold_difference(first, other):
    """Why two runs' OOF rows are not the same folds, or None when they are."""
    (_, config_a, ids_a, _, _, fold_a), (_, config_b, ids_b, _, _, fold_b) = first, other
    settings = [f"{k} {config_a.get(k)} vs {config_b.get(k)}" for k in FOLD_SETTINGS
                if config_a.get(k) != config_b.get(k)]
    if settings:
        return ", ".join(settings)
    if [id_key(i) for i in ids_a] != [id_key(i) for i in ids_b]:
        return (f"{len(ids_a)} vs {len(ids_b)} OOF rows" if len(ids_a) != len(ids_b)
                else "the OOF rows' ids differ or are in another order")
    if not np.array_equal(fold_a, fold_b):
        return f"the fold column differs on {int((fold_a != fold_b).sum())} rows (other training data?)"
    return None


def read_runs(spec, names, runs=RUNS):
    """The runs to blend, checked: same spec, same folds. Returns (runs, fold config, ids, truth,
    folds, [probs per run])."""
    if len(set(names)) < 2:
        raise KitError("blend: give at least two different runs")
    column, loaded, seen = label_column(spec), [], {}
    for name in names:
        run = load_run(name, runs)
        folder = Path(run.directory).resolve()
        if folder in seen:                # "A" and "runs/A" are one run
            raise KitError(f"blend: {seen[folder]!r} and {name!r} are the same run ({run.directory}); "
                           "give at least two different runs")
        seen[folder] = name
        if not _spec_matches(run, spec):
            recorded = run.config.get("spec", {})
            raise KitError(f"run {run.name} was made for another spec ({recorded.get('name')}, fingerprint "
                           f"{recorded.get('fingerprint')}; {spec.path} is {spec.fingerprint()}); blend runs of "
                           "one spec only")
        check_trained_on(run, spec, "blend")      # the same spec text on another training file is not enough
        loaded.append((run, _cv_config(run), *_oof(run, column)))
    for other in loaded[1:]:
        why = _fold_difference(loaded[0], other)
        if why:
            raise KitError(f"runs {loaded[0][0].name} and {other[0].name} were scored on different folds ({why}); "
                           "re-run `python -m kit cv` for them with the same --folds/--holdout/--fold-seed")
    first = loaded[0]
    return [r[0] for r in loaded], first[1], first[2], first[3], first[5], [r[4] for r in loaded]


def run_oof(spec, name, runs=RUNS):
    """(truth, fold, outputs) of one run's oof.csv, the run checked against this spec as a blend's are."""
    run = load_run(name, runs)
    check_trained_on(run, spec, "score")
    _, truth, outputs, fold = _oof(run, label_column(spec))
    return truth, fold, outputs


# -- scoring a blend ----------------------------------------------------------------------------


# -- fitting the weights ------------------------------------------------------------------------


# -- writing the blend --------------------------------------------------------------------------

def _split_probs(column, runs, split, ids):
    """Each run's predictions-<split>.csv outputs, rows in the split's order."""
    probs = []
    for run in runs:
        path = run.predictions(split)
        if not path.is_file():
            raise KitError(f"run {run.name}: no predictions for {split} ({path}); run "
                           f"`python -m kit predict --split {split} --run {run.name}` first")
        frame = read_csv(path)
        missing = [c for c in ["id", *column.output_columns] if c not in frame.columns]
        if missing:
            raise KitError(f"{path}: missing column(s) {missing}")
        if [id_key(i) for i in frame["id"]] != [id_key(i) for i in ids]:
            raise KitError(f"{path}: its ids are not the ids of {split} in the split's order; run "
                           f"`python -m kit predict --split {split} --run {run.name}` again")
        probs.append(_outputs(frame, column))
    return probs


def _blend_folder(runs_dir, name, key):
    """runs/<name>/, refused when it holds something other than this blend (or name is a path)."""
    directory = Path(runs_dir) / check_run_name(name)
    if (directory / CONFIG).is_file():
        if read_config(directory).get("key") != key:
            raise KitError(f"{directory} holds another run or blend; pass another --name")
    elif directory.exists() and any(directory.iterdir()):
        raise KitError(f"{directory} exists and is not a kit run folder; pass another --name")
    return directory


def write_blend(spec, directory, key, runs, config, summary, oof, split_table=None, split=None):
    """run.json (so `kit blend`/`kit runs` read it as a run), cv_scores.json with the fold
    settings and the nested score only (the optimistic OOF score must not rank beside honest CV
    scores), blend.json, oof.csv and predictions-<split>.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    folder, first = Run(directory), runs[0].config
    # what the members learned from (read_runs checked it is this spec's training file)
    data = next((r.config["data"] for r in runs if r.config.get("data")), None)
    write_json(directory / CONFIG, {"key": key, "spec": first["spec"], **({"data": data} if data else {}),
                                    "model": {"model": "blend", "head": "-", "runs": [r.name for r in runs]},
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    nested = summary.get("nested")
    # the nested score ranks the blend beside honest CV scores; the optimistic one never does
    write_json(folder.cv_scores, {"run_key": key, "metric": spec.metric,
                                  **({spec.metric: nested["score"], "nested_blend": True} if nested else {}),
                                  "config": {**{k: config.get(k) for k in FOLD_SETTINGS},
                                             "name": directory.name, "model": "blend"}})
    write_json(folder.blend_file, summary)
    atomic_write(folder.oof, lambda tmp: oof.to_csv(tmp, index=False))
    if split_table is not None:
        atomic_write(folder.predictions(split), lambda tmp: split_table.to_csv(tmp, index=False))


def blend(spec, names, split=None, out=SUBMISSION, name=None, runs_dir=RUNS):
    """Fit the weights on the runs' OOF rows; with a split, write the blended submission.
    Returns a summary dict (also blend.json) for the table."""
    if not spec.has_labels:
        raise KitError(f"{spec.path} has no [columns] label: kit blend blends label probabilities")
    if split is not None:
        rows, frame = load_rows(spec, split)       # input errors first
        submit.check_destination(out, spec, runs_dir)     # never over an input, nor in a run folder
    runs, config, ids, truth, fold, probs = read_runs(spec, names, runs_dir)
    weights, how, result, tried = fit_weights(spec.metric, truth, probs, spec.scale)
    members = [{"run": run.name, "key": run.key, "weight": round(float(w), 6),
                **evaluate(spec.metric, truth, p, spec.scale)} for run, w, p in zip(runs, weights, probs)]
    key = fingerprint("blend", [run.key for run in runs])
    directory = _blend_folder(runs_dir, name or f"blend-{key[:6]}", key)
    column, blended = label_column(spec), combine(probs, weights)
    # two labels: the threshold tuned on the blended OOF (None: argmax); qwk: cut points tuned on it
    threshold = column.blend_decision(truth, blended, result)
    summary = {"metric": spec.metric, "rows": len(ids), "fold_settings": {k: config.get(k) for k in FOLD_SETTINGS},
               "runs": members, "weights": [m["weight"] for m in members], "how": how, "tried": tried,
               "threshold": threshold,
               "blend": result, "optimistic": True, "directory": str(directory),
               # the honest figure: weights (and threshold) fitted without each row's fold
               "nested": nested_blend(spec.metric, truth, probs, fold, spec.scale)}
    oof = column.oof_table(ids, truth, blended, fold, threshold)
    split_table = None
    if split is not None:
        test_probs = combine(_split_probs(column, runs, split, rows.ids), weights)
        split_table, values, _ = column.written(split, rows, Prediction(test_probs, ["blend"] * len(rows)), threshold)
        label = ColumnResult(column, None, values, split_table, {})
        others = [predict_column(column, find_run(column, None, runs=runs_dir), split, column.rows(split, frame)[0])
                  for column in predicted_columns(spec) if column.target is not None]
        submission = build_submission(spec, frame, rows.ids, split, [label, *others],
                                      where=f"blended submission for {split}")
        summary.update(split=split, out=str(out))
    write_blend(spec, directory, key, runs, config, summary, oof, split_table, split)
    if split is not None:
        submit.write(submission, out)
        for result in others:
            result.record(split)
        submit.write_scores_beside(out, None)     # no single run's CV scores describe a blend
    return summary


# -- the table and the command ------------------------------------------------------------------

def _cell(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def format_blend(summary):
    metric = summary["metric"]
    settings = summary["fold_settings"]
    folds = f"holdout {settings['holdout']}" if settings.get("holdout") else f"{settings.get('folds')} folds"
    lines = [f"blend of {len(summary['runs'])} runs on {folds} (fold seed {settings.get('fold_seed')}), "
             f"{summary['rows']} OOF rows",
             "", "| --- | ---: | ---: | ---: | ---: |"]
    rows = [*summary["runs"], {"run": "BLEND", "weight": 1.0, **summary["blend"]}]
    thresholded = any(m["threshold"] is not None for m in rows)     # two labels and a label metric
    lines[1] = f"| run | weight | {metric}{' @0.5' if thresholded else ''} | {metric} tuned | threshold |"
    for m in rows:
        lines.append(f"| {m['run']} | {m['weight']:.3f} | {_cell(m['at_half'])} | {_cell(m['tuned'])} | "
                     f"{_cell(m['threshold'], 3)} |")
    lines.append(f"weights {summary['weights']} chosen by {summary['how']}")
    nested = summary.get("nested")
    if nested:
        lines.append(f"nested BLEND {metric}: {nested['score']:.4f}, each fold's rows blended with weights (and "
                     "threshold) fitted on the other folds alone: the blend's honest out-of-fold score, to compare "
                     "with the single runs'")
    lines.append("warning: the BLEND row is optimistic: its weights (and threshold) were fitted on these same OOF "
                 "rows" + ("; judge the blend by its nested score" if nested else
                           "; with one holdout fold there is no nested score: trust the single runs' scores more"))
    return "\n".join(lines)


