"""Blend weights as pure functions: points of the simplex fitted on OOF probabilities (log loss, or a grid
on a non-smooth metric) or OOF numbers (squared error), and how a blend is scored."""
import itertools

import numpy as np
from sklearn.metrics import roc_curve

from kit.evaluation.metrics import (
    decide,
    metric_info,
    metric_value,
    multi_label_value,
    number_value,
    tune_column_thresholds,
    tune_threshold,
)

NON_SMOOTH = ("f1", "macro_f1", "accuracy")          # metrics worth a direct search over weights


GRID_STEPS = {2: 0.02, 3: 0.05, 4: 0.1}              # simplex grid step by number of runs (<= 4)


EPS = 1e-15


def evaluate(metric, truth, blended, scale=None):
    """{at_half, tuned, threshold, score}: score is what blends are compared by (two labels and a
    metric over labels: the metric at the threshold tuned on these rows, as the submission will be
    decided; a metric over probabilities, rankings or numbers: the metric itself, no threshold;
    scale: a number task's [low, high], which qwk rounds into)."""
    if metric_info(metric).needs == "numbers":
        score = number_value(metric, truth, blended[:, 0], scale)
        return {"at_half": score, "tuned": None, "threshold": None, "score": score}
    if np.ndim(truth) == 2:           # several label columns: flags metrics at per-column tuned thresholds
        at_half = multi_label_value(metric, truth, blended)
        if metric_info(metric).needs != "labels":
            return {"at_half": at_half, "tuned": None, "threshold": None, "score": at_half}
        tuned = multi_label_value(metric, truth, blended, tune_column_thresholds(truth, blended))
        return {"at_half": at_half, "tuned": tuned, "threshold": None, "score": tuned}
    at_half = metric_value(metric, truth, decide(blended, None, 0.5), blended)
    if blended.shape[1] != 2 or metric_info(metric).needs != "labels":
        return {"at_half": at_half, "tuned": None, "threshold": None, "score": at_half}
    threshold, tuned = tune_threshold(truth, blended[:, 1], metric)
    return {"at_half": at_half, "tuned": tuned, "threshold": threshold, "score": tuned}


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


def _true_probs(truth, probs):
    """rows x runs: each run's probability of the true label; all that log loss looks at. Several
    label columns: each (row, column)'s probability of its true 0/1, so the loss is the mean binary
    cross-entropy."""
    truth = np.asarray(truth)
    if truth.ndim == 2:
        return np.stack([np.where(truth == 1, p, 1 - p).ravel() for p in probs], axis=1)
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


def squared_error(weights, outputs, truth):
    return float(np.mean((outputs @ weights - truth) ** 2))


def _squared_error_grad(weights, outputs, truth):
    return 2 * outputs.T @ (outputs @ weights - truth) / len(truth)


def _projected_gradient(loss_of, grad_of, k, steps=2000):
    """Without scipy: projected gradient descent with a backtracking step (log loss and squared
    error are convex in the weights, so this reaches the same optimum as SLSQP, only slower)."""
    w = np.full(k, 1 / k)
    step, loss = 1.0, loss_of(w)
    for _ in range(steps):
        grad = grad_of(w)
        while step > 1e-12:
            candidate = project_simplex(w - step * grad)
            new = loss_of(candidate)
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


def _slsqp(loss_of, grad_of, k):
    from scipy.optimize import minimize
    result = minimize(loss_of, np.full(k, 1 / k), jac=grad_of, method="SLSQP",
                      bounds=[(0.0, 1.0)] * k, options={"maxiter": 500, "ftol": 1e-12},
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(k)}])
    return result.x if result.success else None


def _on_simplex(w):
    w = np.clip(np.asarray(w, float), 0, None)    # SLSQP may leave -1e-17; the blend needs exact >= 0
    return w / w.sum()


def fit_log_loss(truth, probs):
    """(weights, how): the simplex weights of least OOF log loss."""
    true_probs = _true_probs(truth, probs)
    return _simplex_minimum(lambda w: log_loss(w, true_probs), lambda w: _log_loss_grad(w, true_probs),
                            len(probs), "log loss")


def fit_squared_error(truth, outputs):
    """(weights, how): the simplex weights of least OOF squared error (numbers: one output each)."""
    stacked, truth = np.stack([o[:, 0] for o in outputs], axis=1), np.asarray(truth, float)
    return _simplex_minimum(lambda w: squared_error(w, stacked, truth),
                            lambda w: _squared_error_grad(w, stacked, truth), len(outputs), "squared error")


def _simplex_minimum(loss_of, grad_of, k, name):
    """(weights, how) of a convex loss's minimum on the simplex: SLSQP, or without scipy (or when
    SLSQP gives up on near-degenerate inputs) projected gradient descent."""
    try:
        import scipy  # noqa: F401  (only whether it is installed)
        weights = _slsqp(loss_of, grad_of, k)
    except ImportError:
        weights = None
    if weights is None:
        return _on_simplex(_projected_gradient(loss_of, grad_of, k)), f"{name} (projected gradient)"
    return _on_simplex(weights), f"{name} (SLSQP)"


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


def fit_weights(metric, truth, probs, scale=None):
    """(weights, how, evaluation, tried): the log-loss weights (numbers: squared error; several label
    columns: binary log loss); for a non-smooth metric of one label (<= 4 runs) also the best grid
    point; each run alone as a last resort. Kept: the best OOF metric, the log-loss weights on ties
    (they are the smoother, less overfitted choice)."""
    numbers = metric_info(metric).needs == "numbers"
    candidates = [fit_squared_error(truth, probs) if numbers else fit_log_loss(truth, probs)]
    if metric in NON_SMOOTH and len(probs) in GRID_STEPS and np.ndim(truth) == 1:
        candidates.append(fit_grid(metric, truth, probs))
    candidates += [(np.eye(len(probs))[i], f"run {i + 1} alone") for i in range(len(probs))]
    best, tried = None, []
    for weights, how in candidates:
        result = evaluate(metric, truth, combine(probs, weights), scale)
        tried.append({"how": how, "weights": [round(float(w), 6) for w in weights], "score": result["score"]})
        if best is None or _beats(metric, result["score"], best[2]["score"]):
            best = (weights, how, result)
    return (*best, tried)


def nested_blend(metric, truth, probs, fold, scale=None):
    """The blend scored as a whole procedure, out of fold: for each fold, the weights (and a binary
    label metric's threshold, or several columns' thresholds) are fitted on the other folds' OOF rows
    alone and applied to that fold's rows; the metric is then taken over every row. This is the
    score a blend earns on rows its fitting never saw (the blend's own score is fitted on them).
    Returns {"score", "weights": {fold: weights}}, or None with fewer than two folds (a holdout)."""
    truth, fold = np.asarray(truth), np.asarray(fold)
    numbers = sorted(set(fold.tolist()) - {-1})
    if len(numbers) < 2:
        return None
    several, needs = truth.ndim == 2, metric_info(metric).needs
    blended = np.zeros(np.shape(probs[0]), dtype=float)
    thresholds = np.full(truth.shape if several else len(truth), 0.5)
    per_fold = {}
    for number in numbers:
        inside, outside = fold == number, fold != number
        weights, _, result, _ = fit_weights(metric, truth[outside], [p[outside] for p in probs], scale)
        blended[inside] = combine([p[inside] for p in probs], weights)
        if several and needs == "labels":
            thresholds[inside] = tune_column_thresholds(truth[outside], combine([p[outside] for p in probs], weights))
        elif result["threshold"] is not None:
            thresholds[inside] = result["threshold"]
        per_fold[int(number)] = [round(float(w), 6) for w in weights]
    return {"score": _value_at(metric, truth, blended, thresholds, scale), "weights": per_fold}


def _value_at(metric, truth, blended, thresholds, scale=None):
    """The metric of blended outputs decided at per-row thresholds (where the metric decides labels)."""
    if metric_info(metric).needs == "numbers":
        return number_value(metric, truth, blended[:, 0], scale)
    if np.ndim(truth) == 2:
        return multi_label_value(metric, truth, blended, thresholds)
    if blended.shape[1] == 2 and metric_info(metric).needs == "labels":
        return metric_value(metric, truth, (blended[:, 1] >= thresholds).astype(int), blended)
    return metric_value(metric, truth, decide(blended), blended)


def _beats(metric, score, best):
    """score beats best by more than rounding, in the metric's direction (NaN never beats)."""
    info = metric_info(metric)
    return info.better(score, best + (1e-12 if info.higher_is_better else -1e-12))


def combine(probs, weights):
    """The weighted average of the runs' probabilities (rows x labels)."""
    return np.tensordot(np.asarray(weights, float), np.stack(probs), axes=1)
