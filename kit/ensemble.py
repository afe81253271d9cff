"""`kit blend`: a weighted average of several runs' probabilities, weights fitted on their OOF rows.

Runs blend only when their OOF rows come from the same folds (same ids in the same order, the
same fold per row, the same fold settings) and the same spec: otherwise each row's OOF
probabilities would come from models that saw different rows, and the fitted weights would
mean nothing. The weights are non-negative and sum to 1 (a point of the simplex), so the blend
is itself a probability per label. A blend is written as a folder under runs/ with the same
oof.csv / predictions-<split>.csv columns as a run, so it can be blended again.
"""
import itertools
import json
import time
from pathlib import Path

import click
import numpy as np
from sklearn.metrics import roc_curve

from . import submit
from .cli import _friendly, _load, _say, _spec_option
from .data import atomic_write, id_key, load_rows, read_csv, write_json
from .errors import KitError
from .metrics import decide, metric_value, tune_threshold
from .models import Prediction
from .pipeline import SUBMISSION, predictions_frame
from .runs import CONFIG, RUNS, _spec_matches, fingerprint, load_run, read_config

FOLD_SETTINGS = ("folds", "holdout", "fold_seed")
NON_SMOOTH = ("f1", "macro_f1", "accuracy")          # metrics worth a direct search over weights
GRID_STEPS = {2: 0.02, 3: 0.05, 4: 0.1}              # simplex grid step by number of runs (<= 4)
EPS = 1e-15


# -- reading and checking the runs --------------------------------------------------------------

def _cv_config(run):
    if not run.cv_scores.is_file() or not run.oof.is_file():
        raise KitError(f"run {run.name}: no OOF predictions ({run.oof}); run `python -m kit cv` with its settings first")
    try:
        return json.loads(run.cv_scores.read_text()).get("config") or {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KitError(f"{run.cv_scores}: unreadable: {error}") from None


def _oof(run, spec):
    """(ids as written, truth indices, probs, fold) of a run's oof.csv."""
    frame = read_csv(run.oof)
    columns = ["id", "true", "fold", *(f"p_{label}" for label in spec.labels)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{run.oof}: missing column(s) {missing}; run `python -m kit cv` again with its settings")
    lookup = {label: i for i, label in enumerate(spec.labels)}
    unknown = sorted(set(frame["true"]) - set(lookup))
    if unknown:
        raise KitError(f"{run.oof}: true label(s) {unknown[:3]} are not in the spec's labels {spec.labels}")
    return (frame["id"].tolist(), np.array([lookup[t] for t in frame["true"]]),
            _probs(frame, spec), frame["fold"].astype(int).to_numpy())


def _probs(frame, spec):
    return frame[[f"p_{label}" for label in spec.labels]].astype(float).to_numpy()


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
    loaded = []
    for name in names:
        run = load_run(name, runs)
        if not _spec_matches(run, spec):
            recorded = run.config.get("spec", {})
            raise KitError(f"run {run.name} was made for another spec ({recorded.get('name')}, fingerprint "
                           f"{recorded.get('fingerprint')}; {spec.path} is {spec.fingerprint()}); blend runs of "
                           "one spec only")
        loaded.append((run, _cv_config(run), *_oof(run, spec)))
    for other in loaded[1:]:
        why = _fold_difference(loaded[0], other)
        if why:
            raise KitError(f"runs {loaded[0][0].name} and {other[0].name} were scored on different folds ({why}); "
                           "re-run `python -m kit cv` for them with the same --folds/--holdout/--fold-seed")
    first = loaded[0]
    return [r[0] for r in loaded], first[1], first[2], first[3], first[5], [r[4] for r in loaded]


# -- scoring a blend ----------------------------------------------------------------------------

def combine(probs, weights):
    """The weighted average of the runs' probabilities (rows x labels)."""
    return np.tensordot(np.asarray(weights, float), np.stack(probs), axes=1)


def _tune_metric(metric):
    return metric if metric != "auc" else "f1"     # as `kit cv`: AUC has no threshold to tune


def evaluate(metric, truth, blended):
    """{at_half, tuned, threshold, score}: score is what blends are compared by (binary: the
    metric at the threshold tuned on these rows, as the submission will be decided)."""
    at_half = metric_value(metric, truth, decide(blended, None, 0.5), blended)
    if blended.shape[1] != 2:
        return {"at_half": at_half, "tuned": None, "threshold": None, "score": at_half}
    threshold, tuned = tune_threshold(truth, blended[:, 1], _tune_metric(metric))
    if metric == "auc":
        tuned = None         # the threshold (tuned on f1) decides labels; AUC does not move with it
    return {"at_half": at_half, "tuned": tuned, "threshold": threshold,
            "score": at_half if metric == "auc" else tuned}


def _best_over_thresholds(metric, truth, positive):
    """Binary: the metric's best value over every threshold at once (one ROC sweep), for the
    grid search; tune_threshold scores one threshold per call and would be slow on a grid."""
    if len(set(truth.tolist())) < 2:
        return metric_value(metric, truth, (positive >= 0.5).astype(int))
    fpr, tpr, _ = roc_curve(truth, positive, drop_intermediate=False)
    pos, neg = truth.sum(), len(truth) - truth.sum()
    tp, fp = tpr * pos, fpr * neg
    fn, tn = pos - tp, neg - fp
    f1_pos = 2 * tp / np.maximum(2 * tp + fp + fn, EPS)
    if metric == "f1":
        return float(f1_pos.max())
    if metric == "accuracy":
        return float(((tp + tn) / len(truth)).max())
    return float(((f1_pos + 2 * tn / np.maximum(2 * tn + fn + fp, EPS)) / 2).max())   # macro_f1


def _grid_score(metric, truth, blended):
    if blended.shape[1] == 2:
        return _best_over_thresholds(metric, truth, blended[:, 1])
    return metric_value(metric, truth, blended.argmax(1))


# -- fitting the weights ------------------------------------------------------------------------

def _true_probs(truth, probs):
    """rows x runs: each run's probability of the true label; all that log loss looks at."""
    return np.stack([p[np.arange(len(truth)), truth] for p in probs], axis=1)


def log_loss(weights, true_probs):
    return float(-np.mean(np.log(np.clip(true_probs @ weights, EPS, None))))


def _log_loss_grad(weights, true_probs):
    return -np.mean(true_probs / np.clip(true_probs @ weights, EPS, None)[:, None], axis=0)


def project_simplex(v):
    """The closest point of {w >= 0, sum w = 1} to v (Duchi et al. 2008, sort-based)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > cumulative)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1), 0)


def _projected_gradient(true_probs, steps=2000):
    """Without scipy: projected gradient descent with a backtracking step (log loss is convex
    in the weights, so this reaches the same optimum as SLSQP, only slower)."""
    w = np.full(true_probs.shape[1], 1 / true_probs.shape[1])
    step, loss = 1.0, log_loss(w, true_probs)
    for _ in range(steps):
        grad = _log_loss_grad(w, true_probs)
        while step > 1e-12:
            candidate = project_simplex(w - step * grad)
            new = log_loss(candidate, true_probs)
            if new <= loss - 1e-4 * grad @ (w - candidate):
                break
            step /= 2
        else:
            break
        if np.abs(candidate - w).max() < 1e-9:
            w = candidate
            break
        w, loss, step = candidate, new, step * 2
    return w


def _slsqp(true_probs):
    from scipy.optimize import minimize
    k = true_probs.shape[1]
    result = minimize(log_loss, np.full(k, 1 / k), args=(true_probs,), jac=_log_loss_grad, method="SLSQP",
                      bounds=[(0.0, 1.0)] * k, options={"maxiter": 500, "ftol": 1e-12},
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(k)}])
    return result.x if result.success else None


def _on_simplex(w):
    w = np.clip(np.asarray(w, float), 0, None)    # SLSQP may leave -1e-17; the blend needs exact >= 0
    return w / w.sum()


def fit_log_loss(truth, probs):
    """(weights, how): the simplex weights of least OOF log loss."""
    true_probs = _true_probs(truth, probs)
    try:
        import scipy  # noqa: F401  (only whether it is installed)
    except ImportError:
        return _on_simplex(_projected_gradient(true_probs)), "log loss (projected gradient)"
    weights = _slsqp(true_probs)
    if weights is None:      # SLSQP gave up (it happens on near-degenerate inputs)
        return _on_simplex(_projected_gradient(true_probs)), "log loss (projected gradient)"
    return _on_simplex(weights), "log loss (SLSQP)"


def simplex_grid(k, step):
    """Every weight vector of k non-negative multiples of step summing to 1."""
    n = int(round(1 / step))
    for cuts in itertools.combinations(range(n + k - 1), k - 1):      # stars and bars
        parts = np.diff([-1, *cuts, n + k - 1]) - 1
        yield parts / n


def fit_grid(metric, truth, probs):
    """(weights, how): the coarse-grid point of best OOF metric (non-smooth metrics, <= 4 runs)."""
    step = GRID_STEPS[len(probs)]
    best, best_score = None, -np.inf
    for weights in simplex_grid(len(probs), step):
        score = _grid_score(metric, truth, combine(probs, weights))
        if score > best_score + 1e-12:
            best, best_score = weights, score
    return best, f"{metric} grid (step {step:g})"


def fit_weights(metric, truth, probs):
    """(weights, how, evaluation, tried): the log-loss weights; for non-smooth metrics (<= 4 runs) also
    the best grid point; each run alone as a last resort. Kept: the best OOF metric, the
    log-loss weights on ties (they are the smoother, less overfitted choice)."""
    candidates = [fit_log_loss(truth, probs)]
    if metric in NON_SMOOTH and len(probs) in GRID_STEPS:
        candidates.append(fit_grid(metric, truth, probs))
    candidates += [(np.eye(len(probs))[i], f"run {i + 1} alone") for i in range(len(probs))]
    best, tried = None, []
    for weights, how in candidates:
        result = evaluate(metric, truth, combine(probs, weights))
        tried.append({"how": how, "weights": [round(float(w), 6) for w in weights], "score": result["score"]})
        if best is None or result["score"] > best[2]["score"] + 1e-12:
            best = (weights, how, result)
    return (*best, tried)


# -- writing the blend --------------------------------------------------------------------------

def _split_probs(spec, runs, split, ids):
    """Each run's predictions-<split>.csv probabilities, rows in the split's order."""
    probs = []
    for run in runs:
        path = run.predictions(split)
        if not path.is_file():
            raise KitError(f"run {run.name}: no predictions for {split} ({path}); run "
                           f"`python -m kit predict --split {split} --run {run.name}` first")
        frame = read_csv(path)
        missing = [c for c in ["id", *(f"p_{label}" for label in spec.labels)] if c not in frame.columns]
        if missing:
            raise KitError(f"{path}: missing column(s) {missing}")
        if [id_key(i) for i in frame["id"]] != [id_key(i) for i in ids]:
            raise KitError(f"{path}: its ids are not the ids of {split} in the split's order; run "
                           f"`python -m kit predict --split {split} --run {run.name}` again")
        probs.append(_probs(frame, spec))
    return probs


def _blend_folder(runs_dir, name, key):
    """runs/<name>/, refused when it holds something other than this blend."""
    directory = Path(runs_dir) / name
    if (directory / CONFIG).is_file():
        if read_config(directory).get("key") != key:
            raise KitError(f"{directory} holds another run or blend; pass another --name")
    elif directory.exists() and any(directory.iterdir()):
        raise KitError(f"{directory} exists and is not a kit run folder; pass another --name")
    return directory


def _frame(spec, ids, blended, threshold):
    labels = decide(blended, None, threshold)
    return predictions_frame(spec, ids, Prediction(blended, ["blend"] * len(ids)), labels)


def write_blend(spec, directory, key, runs, config, summary, oof, split_table=None, split=None):
    """run.json (so `kit blend`/`kit runs` read it as a run), cv_scores.json with the fold
    settings only (its OOF score is optimistic: it must not rank beside honest CV scores),
    blend.json, oof.csv and predictions-<split>.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    first = runs[0].config
    write_json(directory / CONFIG, {"key": key, "spec": first["spec"],
                                    "model": {"model": "blend", "head": "-", "runs": [r.name for r in runs]},
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_json(directory / "cv_scores.json", {"run_key": key, "metric": spec.metric,
                                              "config": {**{k: config.get(k) for k in FOLD_SETTINGS},
                                                         "name": directory.name, "model": "blend"}})
    write_json(directory / "blend.json", summary)
    atomic_write(directory / "oof.csv", lambda tmp: oof.to_csv(tmp, index=False))
    if split_table is not None:
        atomic_write(directory / f"predictions-{split}.csv", lambda tmp: split_table.to_csv(tmp, index=False))


def blend(spec, names, split=None, out=SUBMISSION, name=None, runs_dir=RUNS):
    """Fit the weights on the runs' OOF rows; with a split, write the blended submission.
    Returns a summary dict (also blend.json) for the table."""
    if not spec.has_labels:
        raise KitError(f"{spec.path} has no [columns] label: kit blend blends label probabilities")
    if split is not None:
        rows, frame = load_rows(spec, split)       # input errors first
        submit.check_destination(out)
    runs, config, ids, truth, fold, probs = read_runs(spec, names, runs_dir)
    weights, how, result, tried = fit_weights(spec.metric, truth, probs)
    members = [{"run": run.name, "key": run.key, "weight": round(float(w), 6),
                **evaluate(spec.metric, truth, p)} for run, w, p in zip(runs, weights, probs)]
    key = fingerprint("blend", [run.key for run in runs])
    directory = _blend_folder(runs_dir, name or f"blend-{key[:6]}", key)
    threshold = result["threshold"]          # binary: tuned on the blended OOF; None: argmax
    summary = {"metric": spec.metric, "rows": len(ids), "fold_settings": {k: config.get(k) for k in FOLD_SETTINGS},
               "runs": members, "weights": [m["weight"] for m in members], "how": how, "tried": tried,
               "threshold": threshold,
               "blend": result, "optimistic": True, "directory": str(directory)}
    blended = combine(probs, weights)
    oof = _frame(spec, ids, blended, threshold)
    oof.insert(1, "true", [spec.labels[i] for i in truth])
    oof["fold"] = fold
    split_table = None
    if split is not None:
        test_probs = combine(_split_probs(spec, runs, split, rows.ids), weights)
        split_table = _frame(spec, rows.ids, test_probs, threshold)
        labels = split_table["label"].tolist()
        from .targets import find_target_runs, predict_targets   # [targets] columns as kit predict writes them
        predicted, promised, _ = predict_targets(spec, split, frame, find_target_runs(spec, runs=runs_dir))
        submission = submit.build(spec, frame, rows.ids, labels, spec.split_path(split), predicted)
        submit.validate(spec, submission, rows.ids, split, where=f"blended submission for {split}", promised=promised)
        summary.update(split=split, out=str(out))
    write_blend(spec, directory, key, runs, config, summary, oof, split_table, split)
    if split is not None:
        submit.write(submission, out)
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
             f"| run | weight | {metric} @0.5 | {metric} tuned | threshold |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for m in [*summary["runs"], {"run": "BLEND", "weight": 1.0, **summary["blend"]}]:
        lines.append(f"| {m['run']} | {m['weight']:.3f} | {_cell(m['at_half'])} | {_cell(m['tuned'])} | "
                     f"{_cell(m['threshold'], 3)} |")
    lines.append(f"weights {summary['weights']} chosen by {summary['how']}")
    lines.append("warning: the blend's OOF score is optimistic: its weights (and threshold) were fitted on "
                 "these same OOF rows; trust the single runs' CV scores more")
    return "\n".join(lines)


@click.command("blend")
@_spec_option
@click.argument("runs", nargs=-1, required=True)
@click.option("--split", default=None, help="Also blend the runs' predictions-<split>.csv into a submission.")
@click.option("--out", default=str(SUBMISSION), show_default=True, help="The submission (with --split).")
@click.option("--name", default=None, help="Blend folder under runs/ (default: blend-<hash of the runs>).")
@_friendly
def blend_command(spec_path, runs, split, out, name):
    """Blend runs (names under runs/ or paths): simplex weights fitted on their OOF rows."""
    summary = blend(_load(spec_path), list(runs), split, out, name)
    _say(format_blend(summary))
    _say(f"blend folder: {summary['directory']}")
    if split is not None:
        cut = f", threshold {summary['threshold']:.4g}" if summary["threshold"] is not None else ""
        _say(f"submission: {out} ({split}{cut})")
