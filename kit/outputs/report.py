"""Reports a competitor looks at: every run folder as a leaderboard (`kit runs`) and one
self-contained HTML page about chosen runs (`kit report`).

Nothing here trains or predicts: it only reads run folders (run.json, cv_scores.json, oof.csv,
train_metrics.json, cv/fold-k.json, predict-*.json, predictions-*.csv). The numbers behind each
plot come from small pure functions (tested on hand-computed cases); matplotlib only draws them,
on its Agg canvas, into PNGs inlined as data URIs, so the page opens offline and travels as one
file.
"""
import base64
import functools
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from kit.core.errors import KitError
from kit.core.extras import install_hint
from kit.core.files import write_text
from kit.core.hashing import file_fingerprint
from kit.evaluation.metrics import MULTI_LABEL_METRICS, NUMBER_METRICS, metric_info
from kit.inputs.data import id_key, load_rows, read_csv
from kit.inputs.spec import load_spec
from kit.runs.folder import CONFIG, RUNS, Run
from kit.tasks.label import predicted_column
from kit.workflows.score import score_file

REPORT = Path("reports") / "report.html"
TOP_RUNS = 2             # runs reported when none are named: the best of the spec by CV score
WRONG_ROWS = 15          # most confidently wrong OOF rows shown per run
CALIBRATION_BINS = 10
TEXT_CHARS = 400         # a wrong row's text is cut here: the table must stay readable
# A KS statistic (largest gap between the two cumulative distributions) at or above this flags a
# shift. The flag is on the size of the gap, not the p-value: with thousands of rows almost any
# gap is "significant", and 0.1 means a tenth of the rows moved across some probability.
SHIFT_WARN = 0.1        # the KS statistic a shift needs to be flagged ...
SHIFT_P = 0.01          # ... and the p-value it must come under (a large gap on few rows is noise)


# -- reading run folders -------------------------------------------------------------------------

class Skip(Exception):
    """A folder under runs/ that is not a readable kit run: one notice line, never a crash."""


def _read_json(path):
    """A JSON file's content; None when the file is absent; Skip when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:      # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Skip(f"{path}: unreadable ({type(error).__name__})") from None


def _optional_json(path, notices):
    """Like _read_json, but a broken optional file is a notice and counts as absent."""
    try:
        value = _read_json(path)
    except Skip as skip:
        notices.append(f"ignored {skip}")
        return None
    return value if isinstance(value, dict) else None


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value):
    return value is not None and math.isfinite(value)


def run_settings(config):
    """The settings a competitor compares runs by. TF-IDF ignores all of them (its C is tuned
    inside), so it shows none."""
    model, train = config.get("model") or {}, config.get("train") or {}
    levers = {key: train[key] for key in ("pseudo", "teacher") if train.get(key)}
    if train.get("teacher"):
        levers["kl"] = f"{train.get('kl_weight'):g}@T{train.get('temperature'):g}"
    if train.get("pseudo"):
        levers["pseudo_at"] = f"{train.get('pseudo_threshold'):g}" + (" soft" if train.get("pseudo_soft") else "")
    if model.get("model") == "tfidf" or model.get("head") == "extract":     # nothing of the rest applies
        return levers
    settings = {"lr": train.get("lr"), **levers}
    if train.get("max_steps"):
        settings["steps"] = train["max_steps"]
    else:
        settings["epochs"] = train.get("epochs")
    settings["lora_r"], settings["lora_layers"] = model.get("lora_r"), model.get("lora_layers")
    settings["max_length"] = ((config.get("spec") or {}).get("resolved") or {}).get("max_length")
    return settings


def _training_parts(settings):
    parts = [f"lr {settings['lr']:g}" if _number(settings.get("lr")) is not None else None,
             f"{settings['steps']} steps" if "steps" in settings else f"{settings.get('epochs')} ep"]
    r, layers = settings.get("lora_r"), settings.get("lora_layers")
    parts.append("full ft" if r == 0 else f"r{r}" + (f" top{layers}" if layers not in (0, None, "auto")
                                                     else " all" if layers == 0 else ""))
    parts.append(f"len {settings['max_length']}" if settings.get("max_length") else None)
    return parts


def settings_text(settings):
    if not settings:
        return "-"
    parts = _training_parts(settings) if "lr" in settings else []   # TF-IDF, extractors: only the levers
    parts.append(f"pseudo {settings['pseudo']} p>={settings['pseudo_at']}" if settings.get("pseudo") else None)
    parts.append(f"teacher {settings['teacher']} kl {settings['kl']}" if settings.get("teacher") else None)
    return " ".join(p for p in parts if p) or "-"


def _created(config, directory):
    """run.json's `created`, else the config file's time (older runs, hand-made folders)."""
    created = config.get("created")
    if isinstance(created, str) and created:
        return created.replace("T", " ")[:16]
    return time.strftime("%Y-%m-%d %H:%M", time.localtime((directory / CONFIG).stat().st_mtime))


def last_predicted(entries):
    """The entry whose predictions were written last (the run behind the latest submission), or None."""
    def written(entry):
        stamps = [path.stat().st_mtime for path in Run(entry["path"]).predicted_splits().values()]
        return max(stamps, default=None)
    dated = [(written(e), e["name"], e) for e in entries if e["predicted"]]
    dated = [d for d in dated if d[0] is not None]
    return max(dated, key=lambda d: d[:2])[2] if dated else None


def _predicted(directory, notices):
    """{split: predict seconds} for every predict-<split>.json: the splits a submission was written for."""
    out = {}
    for split, path in Run(directory).predicted_splits().items():
        stats = _optional_json(path, notices) or {}
        out[split] = _number(stats.get("seconds"))
    return out


def read_run(directory, notices):
    """One leaderboard entry from a run folder; Skip when it is not a readable kit run."""
    directory = Path(directory)
    config = _read_json(directory / CONFIG)
    if config is None:
        raise Skip(f"{directory}: not a run folder (no {CONFIG})")
    try:
        return _entry(directory, config, notices)
    except (AttributeError, KeyError, TypeError, ValueError) as error:   # a foreign or hand-edited run.json
        raise Skip(f"{directory}: {CONFIG} is not a kit run configuration ({type(error).__name__}: {error})") from None


def _entry(directory, config, notices):
    spec, model = config["spec"], config.get("model") or {}
    resolved = spec.get("resolved") or {}
    run = Run(directory, config)
    scores = _optional_json(run.cv_scores, notices) or {}
    metric = scores.get("metric") or resolved.get("metric")
    train_metrics = _optional_json(run.train_metrics, notices) or {}
    per_fold = [v for v in scores.get("per_fold") or [] if _number(v) is not None]
    cv_seconds = [_number(scores.get("train_seconds")), _number(scores.get("predict_seconds"))]
    return {
        "name": directory.name, "path": str(directory), "key": config["key"],
        "spec": {"name": spec["name"], "fingerprint": spec.get("fingerprint"), "path": spec.get("path")},
        "metric": metric, "labels": resolved.get("labels"),
        # a number per row, several label columns, or one label (what the run's sections can show)
        "task": ("columns" if resolved.get("label_columns") else
                 "number" if metric in NUMBER_METRICS else "label"),
        "model": Path(str(model.get("model", "?"))).name, "model_path": model.get("model"),
        "head": "-" if model.get("model") == "tfidf" else model.get("head"),
        "settings": run_settings(config),
        "score": _number(scores.get(metric)) if metric else None,
        "fold_mean": _number(scores.get("fold_mean")), "fold_std": _number(scores.get("fold_std")),
        "per_fold": per_fold, "folds": len(per_fold),
        "tuned_score": _number(scores.get("tuned_score")), "tuned_threshold": _number(scores.get("tuned_threshold")),
        "cv_seconds": sum(cv_seconds) if all(s is not None for s in cv_seconds) else None,
        "train_seconds": _number(train_metrics.get("train_seconds")),
        "trained": run.has_full_model,
        "predicted": _predicted(directory, notices),
        "created": _created(config, directory),
    }


def collect_runs(runs_dir=RUNS):
    """(entries, notices) for every folder under runs_dir. Files beside the folders (the tables
    `kit cv` saves) are not runs; a folder that is not a readable run becomes a notice."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise KitError(f"{runs_dir}: no such runs folder; run `python -m kit cv` or `python -m kit train` first")
    entries, notices = [], []
    for directory in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            entries.append(read_run(directory, notices))
        except Skip as skip:
            notices.append(f"skipped {skip}")
    return entries, notices


def _best_first(entry):
    """Sorting key: the best CV score first, in its metric's direction (log loss: the lowest);
    the keyword metrics, not in the registry, are higher-is-better."""
    info = metric_info(entry["metric"]) if entry["metric"] else None
    return info.sort_key(entry["score"]) if info else -entry["score"]


def lower_is_better(metric):
    info = metric_info(metric) if metric else None
    return info is not None and not info.higher_is_better


def rank(entries):
    """Best first by CV score, in the metric's direction (the registry in evaluation/metrics.py
    says which); then runs whose score is NaN, then runs without CV scores (newest first)."""
    scored = sorted((e for e in entries if _finite(e["score"])), key=lambda e: (_best_first(e), e["name"]))
    nan = sorted((e for e in entries if e["score"] is not None and not _finite(e["score"])), key=lambda e: e["name"])
    rest = sorted((e for e in entries if e["score"] is None), key=lambda e: e["created"], reverse=True)
    return scored + nan + rest


def spec_key(entry):
    return entry["spec"]["name"], entry["spec"]["fingerprint"]


def group_by_spec(entries):
    """One ranked group per spec (name + fingerprint): scores under different specs (another
    metric, other labels, another prompt) are never ranked together."""
    groups = {}
    for entry in entries:
        groups.setdefault(spec_key(entry), []).append(entry)
    out = []
    for key in sorted(groups, key=lambda k: (str(k[0]), str(k[1]))):
        runs = rank(groups[key])
        metric = next((e["metric"] for e in runs if e["metric"]), None)
        out.append({"spec": runs[0]["spec"], "metric": metric, "runs": runs})
    return out


def spec_matcher(spec):
    """A test on an entry's recorded spec: a Spec object or spec file matches by its resolved path
    or its name + fingerprint; any other string matches the spec name."""
    if isinstance(spec, (str, Path)) and not Path(spec).is_file():
        return lambda recorded: recorded.get("name") == str(spec)
    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    path, key = str(Path(spec.path).resolve()), (spec.name, spec.fingerprint())
    return lambda recorded: recorded.get("path") == path or (recorded.get("name"), recorded.get("fingerprint")) == key


def select(entries, spec=None, model=None):
    """The --spec and --model filters (model: its name as in the run folder's name, or as given)."""
    if spec is not None:
        matches = spec_matcher(spec)
        entries = [e for e in entries if matches(e["spec"])]
    if model is not None:
        entries = [e for e in entries if model in (e["model"], e["model_path"])]
    return entries


# -- the leaderboard as text ----------------------------------------------------------------------

def _seconds(value):
    return "-" if value is None else f"{value:.1f}"


def leaderboard_rows(group):
    """Header and cells of one spec's table: shared by the terminal and the HTML report."""
    metric = group["metric"] or "score"
    direction = " (lower is better)" if lower_is_better(group["metric"]) else ""
    header = ["#", "run", "model", "head", "settings", f"{metric}{direction} ± fold std", "tuned", "cv s", "train s",
              "submitted", "created"]
    rows, place = [], 0
    for entry in group["runs"]:
        scored = _finite(entry["score"])
        place += scored
        score = "-" if entry["score"] is None else f"{entry['score']:.4f}"
        if scored and entry["fold_std"] is not None:
            score += f" ± {entry['fold_std']:.4f}"
        tuned = "-" if entry["tuned_score"] is None else f"{entry['tuned_score']:.4f}" + (
            " (OOF-tuned)" if entry["tuned_threshold"] is None
            else f" @{entry['tuned_threshold']:g}")
        submitted = ", ".join(split + ("" if s is None else f" ({s:.1f} s)") for split, s in entry["predicted"].items())
        rows.append([str(place) if scored else "-", entry["name"], entry["model"], str(entry["head"]),
                     settings_text(entry["settings"]), score, tuned, _seconds(entry["cv_seconds"]),
                     _seconds(entry["train_seconds"]), submitted or "-", entry["created"]])
    return header, rows


def group_title(group):
    spec = group["spec"]
    scored = sum(_finite(e["score"]) for e in group["runs"])
    return (f"spec {spec['name']} ({str(spec['fingerprint'])[:8]}, {spec['path']}): {group['metric']}, "
            f"{len(group['runs'])} run(s), {scored} with CV scores, best first")


def format_table(header, rows):
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_groups(groups):
    return "\n\n".join(f"{group_title(g)}\n{format_table(*leaderboard_rows(g))}" for g in groups)


# -- the data behind each plot (pure functions) ---------------------------------------------------

def confusion_counts(truth, predicted, labels):
    """counts[i][j]: rows whose true label is labels[i] and predicted label labels[j]."""
    return confusion_matrix(list(truth), list(predicted), labels=list(labels)).tolist()


def decide_at(threshold, positive_probs, predicted, decided, labels):
    """Binary labels at another threshold, as `kit predict --threshold` decides them: a parsed
    generated answer (decided == "generate") keeps its label, every other row is re-thresholded."""
    return [p if how == "generate" else labels[1] if prob >= threshold else labels[0]
            for prob, p, how in zip(positive_probs, predicted, decided)]


def threshold_curve(truth, positive_probs):
    """Precision, recall and F1 of "positive when P >= t" at every distinct t (scikit-learn's
    precision_recall_curve, less its closing recall-0 point, which has no threshold)."""
    precision, recall, thresholds = precision_recall_curve(np.asarray(truth), np.asarray(positive_probs, float))
    precision, recall = precision[:-1], recall[:-1]
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {"threshold": thresholds.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
            "f1": f1.tolist()}


def roc_points(truth, positive_probs):
    """The ROC curve's corners (false and true positive rates) and its area; None when the rows
    hold one class only (no curve exists)."""
    truth, probs = np.asarray(truth), np.asarray(positive_probs, float)
    if len(set(truth.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(truth, probs)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(roc_auc_score(truth, probs))}


def calibration_bins(outcome, probs, bins=CALIBRATION_BINS):
    """Reliability: rows grouped by predicted probability into equal-width bins (lo, hi] (the first
    also takes 0), binned exactly as scikit-learn's calibration_curve bins them, each with its
    count, mean prediction and observed frequency; ece is the count-weighted mean |gap|."""
    outcome, probs = np.asarray(outcome, float), np.asarray(probs, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], probs)        # side="left": a value on an edge goes below it
    out, gap = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        mean = float(probs[mask].mean()) if count else None
        observed = float(outcome[mask].mean()) if count else None
        if count:
            gap += count * abs(observed - mean)
        out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                    "mean_predicted": mean, "observed": observed})
    return {"bins": out, "ece": gap / len(probs) if len(probs) else None}


def confident_mistakes(ids, truth, predicted, probs, labels, limit=WRONG_ROWS):
    """The wrong OOF rows, most confident first: ranked by the probability the model gave the
    label it chose; ties keep file order."""
    column = {label: j for j, label in enumerate(labels)}
    rows = [{"id": ids[i], "true": t, "predicted": p, "confidence": float(probs[i][column[p]]),
             "p_true": float(probs[i][column[t]])}
            for i, (t, p) in enumerate(zip(truth, predicted)) if t != p]
    rows.sort(key=lambda row: -row["confidence"])       # sort is stable: ties stay in file order
    return rows[:limit]


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical
    cumulative distributions (0: identical samples, 1: no overlap)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    gap = np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(gap).max())


def shift_statistic(oof, other, warn=SHIFT_WARN):
    """Do two sets of predicted probabilities differ? The KS statistic (scipy's ks_2samp, with its
    p-value, when scipy is installed; else ks_statistic) and a flag when it reaches `warn` with a
    p-value under SHIFT_P (without scipy: the statistic alone)."""
    oof, other = np.asarray(oof, float), np.asarray(other, float)
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        statistic, pvalue, method = ks_statistic(oof, other), None, "ks_statistic (scipy not installed)"
    else:
        result = ks_2samp(oof, other)
        statistic, pvalue, method = float(result.statistic), float(result.pvalue), "scipy.stats.ks_2samp"
    shifted = statistic >= warn and (pvalue is None or pvalue < SHIFT_P)
    return {"ks": statistic, "pvalue": pvalue, "method": method, "threshold": warn, "shifted": shifted,
            "oof_mean": float(oof.mean()), "other_mean": float(other.mean())}


def loss_curves(directory):
    """{name: losses} for every recorded loss log: each CV fold's (cv/fold-k.json stats.loss_log,
    when the fold results carry it) and the full training run's (train_metrics.json loss_log)."""
    run, out = Run(directory), {}
    for number, path in run.fold_results().items():
        try:
            losses = ((_read_json(path) or {}).get("stats") or {}).get("loss_log")
        except (Skip, AttributeError):      # an unreadable fold result: the CV code refits it anyway
            continue
        if losses:
            out[f"fold {number + 1}"] = [float(v) for v in losses]
    try:
        losses = (_read_json(run.train_metrics) or {}).get("loss_log")
    except (Skip, AttributeError):
        losses = None
    if losses:
        out["full train"] = [float(v) for v in losses]
    return out


# -- one run's report data --------------------------------------------------------------------------

class RunData:
    """A run's OOF rows (and its test predictions) as arrays, read once for every section."""

    def __init__(self, entry, split=None):
        self.entry, self.directory, self.split = entry, Path(entry["path"]), split
        self.config = _read_json(self.directory / CONFIG)
        self.run = Run(self.directory, self.config)
        self.scores = _read_json(self.run.cv_scores) or {}
        self.labels = [str(label) for label in entry["labels"] or []]
        self.binary = len(self.labels) == 2
        self.oof = self._frame(self.run.oof) if self.run.oof.is_file() else None
        if self.oof is not None:
            self.ids = self.oof["id"].tolist()
            self.truth, self.predicted = self.oof["true"].tolist(), self.oof[predicted_column(self.oof)].tolist()
            self.probs = self._probs(self.oof)
            self.decided = self.oof["decided"].tolist() if "decided" in self.oof else [""] * len(self.ids)
            self.fold = self.oof["fold"].astype(int).to_numpy()

    def _frame(self, path):
        frame = read_csv(path)
        missing = [c for c in ["id", *(f"p_{label}" for label in self.labels)] if c not in frame.columns]
        if missing or not self.labels:
            raise KitError(f"{path}: missing column(s) {missing} for labels {self.labels}")
        return frame

    def _probs(self, frame):
        return frame[[f"p_{label}" for label in self.labels]].astype(float).to_numpy()

    def positive(self):
        """Binary: truth as 0/1 for the spec's positive (second) label, and P(positive)."""
        return np.array([t == self.labels[1] for t in self.truth], int), self.probs[:, 1]

    def predicted_by(self, split):
        """What wrote predictions-<split>.csv, as its predict stats record it."""
        stats = _read_json(self.run.predict_stats(split)) or {}
        models = stats.get("models") or []
        if len(models) > 1:
            return f"the average of its {len(models)} fold models"
        return "the trained run's model" if models else "the run's model"

    def predictions(self):
        """(split, probs) of predictions-<split>.csv; no split asked for: test if predicted, else any."""
        split = self.split
        if split is None:
            found = self.run.predictions_splits()
            split = "test" if "test" in found else (found[0] if found else None)
        path = self.run.predictions(split)
        if split is None or not path.is_file():
            return split, None
        return split, self._probs(self._frame(path))


@functools.lru_cache(maxsize=4)
def _train_texts(spec_path, spec_stamp, train_stamp):
    """({id key: input text} of the spec's train split, as the model saw it; the data's
    fingerprint). The files' modification times are part of the cache key: a long-lived process
    never shows stale text."""
    spec = load_spec(spec_path)
    rows, _ = load_rows(spec, "train")
    return {id_key(i): t for i, t in zip(rows.ids, rows.texts)}, file_fingerprint(spec.train)


def texts_for(config):
    """(texts by id key or None, a note): the text is read through the run's own spec file."""
    path = Path(str((config.get("spec") or {}).get("path")))
    if not path.is_file():
        return None, f"the run's spec file {path} is gone: ids only"
    try:
        train = Path(load_spec(path).train)
        texts, data_fingerprint = _train_texts(str(path), path.stat().st_mtime_ns, train.stat().st_mtime_ns)
    except (KitError, OSError) as error:
        return None, f"could not read the train rows through {path} ({error}): ids only"
    if data_fingerprint != (config.get("data") or {}).get("fingerprint"):
        return texts, f"the train file changed since this run; texts matched by id through {path}"
    return texts, f"texts read through {path}"


# -- drawing (matplotlib, Agg canvas, inline PNG) ---------------------------------------------------

def _figure(width=5.6, height=3.8, **subplots):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise KitError(f"kit report draws with matplotlib, which is not installed: {install_hint('matplotlib')}") from None
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)       # the Agg canvas, set per figure: no global backend switch
    return figure, figure.subplots(**subplots)


def _plain(text):
    """text as matplotlib must draw it, exactly as written: a `$` would start math text ("$0-$50" drawn
    as "0 − 50", an unbalanced one a parser error), so each is escaped."""
    return str(text).replace("$", r"\$")


def _image(figure, alt):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image", "alt": alt, "src": f"data:image/png;base64,{data}"}     # an image block, see _note


def plot_confusion(matrices, labels):
    """matrices: [(title, counts)] drawn side by side as annotated heat maps."""
    figure, axes = _figure(4.2 * len(matrices), 3.8, ncols=len(matrices), squeeze=False)
    for ax, (title, counts) in zip(axes[0], matrices):
        counts = np.asarray(counts)
        ax.imshow(counts, cmap="Blues")
        for (i, j), value in np.ndenumerate(counts):
            shown_value = f"{value:.2f}" if counts.dtype.kind == "f" else str(value)
            ax.text(j, i, shown_value, ha="center", va="center", fontsize=13,
                    color="white" if value > counts.max() / 2 else "black")
        shown = [_plain(label) for label in labels]
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=shown, yticklabels=shown,
               xlabel="predicted", ylabel="true", title=title)
    return _image(figure, "confusion matrix")


def plot_threshold(curve, tuned, metric):
    figure, ax = _figure()
    for name in ("precision", "recall", "f1"):
        ax.plot(curve["threshold"], curve[name], label=name)
    ax.axvline(0.5, color="grey", linestyle=":", label="0.5")
    if tuned is not None:
        ax.axvline(tuned[0], color="black", linestyle="--", label=f"tuned {tuned[0]:g} ({metric} {tuned[1]:.4f})")
    ax.set(xlabel="threshold on P(positive)", ylabel="score", xlim=(0, 1), ylim=(0, 1.02),
           title="precision / recall / F1 vs threshold")
    ax.legend(loc="lower left", fontsize=8)
    return _image(figure, "precision, recall and F1 against the threshold")


def plot_roc(points):
    figure, ax = _figure(4.4, 3.8)
    ax.plot(points["fpr"], points["tpr"], label=f"AUC {points['auc']:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    return _image(figure, "ROC curve")


def plot_calibration(calibration, what):
    figure, (top, bottom) = _figure(5.0, 4.6, nrows=2, sharex=True, height_ratios=[3, 1])
    filled = [b for b in calibration["bins"] if b["count"]]
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    top.plot([b["mean_predicted"] for b in filled], [b["observed"] for b in filled], marker="o", label="model")
    top.set(ylabel="observed frequency", title=_plain(f"reliability ({what}); ECE {calibration['ece']:.4f}"),
            ylim=(0, 1.02))
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([(b["low"] + b["high"]) / 2 for b in calibration["bins"]], [b["count"] for b in calibration["bins"]],
               width=1 / len(calibration["bins"]) * 0.9, color="tab:grey")
    bottom.set(xlabel="predicted probability", ylabel="rows", xlim=(0, 1))
    return _image(figure, "calibration plot")


def plot_losses(curves):
    figure, ax = _figure()
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=name, linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    ax.legend(fontsize=8)
    return _image(figure, "training loss curves")


def plot_shift(panels, split):
    """panels: [(label, oof probs, split probs, KS statistic)], one histogram each."""
    figure, axes = _figure(min(5.6, 3.2 * len(panels)) if len(panels) > 1 else 5.6, 3.6,
                           ncols=len(panels), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, (label, oof, other, ks) in zip(axes[0], panels):
        ax.hist(oof, bins=bins, density=True, histtype="step", linewidth=1.5, label="OOF")
        ax.hist(other, bins=bins, density=True, histtype="step", linewidth=1.5, label=_plain(split))
        ax.set(xlabel=_plain(f"P({label})"), ylabel="density", title=_plain(f"P({label}): KS {ks:.3f}"))
        ax.legend(fontsize=8)
    return _image(figure, f"predicted probabilities, OOF against {split}")


# -- HTML ----------------------------------------------------------------------------------------------
# The markup lives in templates/ (report.html.j2, macros.html.j2, report.css). The functions below
# only gather what the page shows, as plain values and "blocks" (a note, a table or an image); the
# templates' autoescape escapes every one of them, so a run name, a label or a CSV cell holding
# markup shows as text. The folder is found next to this file: the kit runs from the repository,
# not always as an installed package.
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _note(text, kind="note"):
    return {"type": "note", "text": str(text), "css": kind}


def _table(header, rows, classes=None):
    """rows: lists of cells, each a value or {"text", "href"} (a link) or {"text", "css"} (a span)."""
    classes = classes or [""] * len(rows)
    return {"type": "table", "header": header,
            "rows": [{"css": c, "cells": row} for row, c in zip(rows, classes)]}


def leaderboard_view(groups, chosen):
    """[{title, table}] per spec; the chosen runs' names link to their sections."""
    anchors = {entry["path"]: f"#run-{n}" for n, entry in enumerate(chosen, 1)}
    out = []
    for group in groups:
        header, rows = leaderboard_rows(group)
        for entry, row in zip(group["runs"], rows):
            if entry["path"] in anchors:
                row[1] = {"text": row[1], "href": anchors[entry["path"]]}
        classes = ["chosen" if e["path"] in anchors else "" for e in group["runs"]]
        out.append({"title": group_title(group), "table": _table(header, rows, classes)})
    return out


def _folds_section(data):
    per_fold = data.scores.get("per_fold") or []
    numbers = sorted(set(data.fold.tolist())) if data.oof is not None else list(range(len(per_fold)))
    rows = []
    for position, number in enumerate(numbers):
        stats = ((_read_json(Run(data.directory).fold_result(number)) or {}).get("stats") or {})
        size = int((data.fold == number).sum()) if data.oof is not None else "-"
        score = f"{per_fold[position]:.4f}" if position < len(per_fold) else "-"
        rows.append([number + 1, size, score, _seconds(_number(stats.get("train_seconds"))),
                     _seconds(_number(stats.get("predict_seconds"))), _frozen_cell(stats)])
    if not rows:
        return [_note("no per-fold scores recorded")]
    metric = data.entry["metric"]
    spread = (f"fold mean {data.entry['fold_mean']:.4f} ± {data.entry['fold_std']:.4f} (std over folds); "
              if data.entry["fold_mean"] is not None and data.entry["fold_std"] is not None else "")
    info = metric_info(metric) if metric else None
    cut = " at threshold 0.5" if data.binary and (info is None or info.needs == "labels") else ""
    oof = f"OOF {metric} {data.entry['score']:.4f}{cut}" if _finite(data.entry["score"]) else ""
    summary = spread + oof
    frozen = data.scores.get("frozen")
    if frozen:
        summary += (f"; frozen lower blocks: {frozen['rows_computed']} row states computed once, "
                    f"{frozen['rows_reused']} reused from the state cache")
    header = ["fold", "rows", metric, "train s", "predict s", "frozen states computed / reused"]
    return [_table(header, rows), _note(summary)]


def _frozen_cell(stats):
    """A fold's frozen lower-block states, training and prediction: computed / reused."""
    computed = sum(stats.get(f"{p}frozen_rows_computed") or 0 for p in ("", "predict_"))
    reused = sum(stats.get(f"{p}frozen_rows_reused") or 0 for p in ("", "predict_"))
    return f"{computed} / {reused}" if computed or reused else "-"


def _confusion_section(data):
    matrices = [("threshold 0.5" if data.binary else "most probable label",
                 confusion_counts(data.truth, data.predicted, data.labels))]
    tuned = data.entry["tuned_threshold"]
    if data.binary and tuned is not None and tuned != 0.5:
        relabelled = decide_at(tuned, data.probs[:, 1], data.predicted, data.decided, data.labels)
        matrices.append((f"tuned threshold {tuned:g}", confusion_counts(data.truth, relabelled, data.labels)))
    counts = np.asarray(matrices[0][1], float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    matrices.append(("share of each true label", share))
    return [plot_confusion(matrices, data.labels),
            _note(f"{len(data.ids)} OOF rows; rows: true label, columns: predicted; the last panel divides each "
                  "row by its count (the diagonal is each label's recall)"),
            _per_class_table(data)]


def _per_class_table(data):
    """Precision, recall, F1 and support of each label on the OOF rows (threshold 0.5 / argmax)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        list(data.truth), list(data.predicted), labels=list(data.labels), zero_division=0)
    rows = [[label, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", str(int(s))]
            for label, p, r, f, s in zip(data.labels, precision, recall, f1, support)]
    return _table(["label", "precision", "recall", "F1", "support"], rows)


def _threshold_section(data):
    truth, positive = data.positive()
    threshold = data.entry["tuned_threshold"]
    tuned = None if threshold is None else (threshold, data.entry["tuned_score"])
    metric = data.scores.get("metric", "f1")
    info = metric_info(metric)
    shown = metric if info is not None and info.needs == "labels" else "f1"   # older auc runs were tuned on F1
    where = ("the dashed line is the threshold `kit cv` tuned on these OOF rows (`kit predict --threshold oof` uses "
             "it)" if tuned else f"no threshold decides the submission: metric {metric} scores the probabilities")
    return [plot_threshold(threshold_curve(truth, positive), tuned, shown),
            _note(f"positive label {data.labels[1]!r}; {where}")]


def _roc_section(data):
    points = roc_points(*data.positive())
    return [plot_roc(points) if points else _note("the OOF rows hold one class only: no ROC curve")]


def _calibration_section(data):
    if data.binary:
        outcome, probs = data.positive()
        what = f"P({data.labels[1]})"
    else:
        outcome = np.array([t == p for t, p in zip(data.truth, data.predicted)], int)
        probs, what = data.probs.max(1), "confidence of the chosen label"
    return [plot_calibration(calibration_bins(outcome, probs), what),
            _note(f"{what} on OOF rows, in {CALIBRATION_BINS} equal-width bins; points on the diagonal are "
                  "calibrated; ECE is the row-weighted mean gap")]


def _loss_section(data):
    return _loss_blocks(data.run, data.entry)


def _loss_blocks(run, entry):
    curves = loss_curves(run.directory)
    if not curves:
        why = ("TF-IDF has no training loss" if entry["model"] == "tfidf" else
               "the CV fold results carry no loss log, and this run has no full training with one")
        return [_note(f"no loss log recorded ({why})")]
    cross_validated = run.cv_scores.is_file()
    missing = "" if any(k.startswith("fold") for k in curves) or not cross_validated else \
        "; the CV folds recorded no loss log"
    return [plot_losses(curves), _note(f"per optimizer step{missing}")]


def _shift_section(data):
    split, other = data.predictions()
    if other is None:
        return [_note(f"no predictions-{split}.csv in this run: run `python -m kit predict --run {data.entry['name']}"
                      f"{'' if split is None else ' --split ' + split}` to compare" if split else
                      "no predictions in this run yet: run `python -m kit predict` to compare")]
    columns = [1] if data.binary else range(len(data.labels))
    results = [(data.labels[j], shift_statistic(data.probs[:, j], other[:, j])) for j in columns]
    image = plot_shift([(label, data.probs[:, j], other[:, j], r["ks"])
                        for j, (label, r) in zip(columns, results)], split)
    lines = []
    for label, r in results:
        p = "" if r["pvalue"] is None else f", p-value {r['pvalue']:.2g}"
        text = (f"P({label}): KS {r['ks']:.3f} ({r['method']}{p}); mean {r['oof_mean']:.3f} on OOF rows, "
                f"{r['other_mean']:.3f} on {split}")
        lines.append(_note(("SHIFT: " if r["shifted"] else "") + text, "warn" if r["shifted"] else "ok"))
    shifted = any(r["shifted"] for _, r in results)
    verdict = (f"the {split} predictions differ from the OOF ones (KS >= {SHIFT_WARN}, p < {SHIFT_P}): the CV "
               "score may not carry over to them" if shifted else
               f"no shift flagged (for every label KS < {SHIFT_WARN} or p >= {SHIFT_P})")
    source = f"{len(data.ids)} OOF rows (fold models) against {len(other)} {split} rows ({data.predicted_by(split)})"
    return [image, *lines, _note(f"{verdict}. {source}.")]


def _wrong_section(data):
    wrong = confident_mistakes(data.ids, data.truth, data.predicted, data.probs, data.labels)
    if not wrong:
        return [_note("no wrong OOF rows")]
    texts, note = texts_for(data.config)
    rows = []
    for row in wrong:
        text = "-" if texts is None else texts.get(id_key(row["id"]), "(id not in the train file)")
        text = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"
        rows.append([row["id"], row["true"], row["predicted"], f"{row['confidence']:.3f}",
                     f"{row['p_true']:.3f}", {"text": text, "css": "text"}])
    return [_table(["id", "true", "predicted", "P(predicted)", "P(true)", "text"], rows),
            _note(f"the {len(wrong)} most confidently wrong OOF rows (threshold 0.5); {note}")]


SECTIONS = [   # (id suffix, heading, builder, binary only, needs OOF rows)
    ("folds", "Per-fold scores", _folds_section, False, False),
    ("confusion", "Confusion matrix", _confusion_section, False, True),
    ("threshold", "Precision / recall / F1 vs threshold", _threshold_section, True, True),
    ("roc", "ROC curve", _roc_section, True, True),
    ("calibration", "Calibration", _calibration_section, False, True),
    ("loss", "Training loss", _loss_section, False, False),
    ("shift", "OOF vs predicted-split probabilities", _shift_section, False, True),
    ("wrong", "Most confidently wrong OOF rows", _wrong_section, False, True),
]


KEYWORD_METRICS = ("exact_f1", "partial_f1")
KEYWORD_ROWS = 8


def _run(number, entry, blocks, sections=None):
    """One run as the page template takes it: blocks under its heading, then its sections' grid."""
    return {"number": number, "name": entry["name"], "blocks": blocks, "sections": sections}


def keyword_view(number, entry):
    """A [targets] keyword run: its held-out keyword scores and some rows, gold beside predicted."""
    run = Run(entry["path"])
    scores = _read_json(run.cv_scores) or {}
    summary = (f"model {entry['model']}, settings {settings_text(entry['settings'])}; created {entry['created']}; "
               f"{entry['path']}")
    blocks = [_note(summary)]
    if scores:
        rows = [[kind] + [f"{scores[f'{kind}_{m}']:.4f}" for m in ("precision", "recall", "f1")]
                for kind in ("exact", "partial")]
        blocks += [_table(["match", "precision", "recall", "F1"], rows), _note(
            f"{scores['rows']} held-out rows; {scores['mean_predicted']} keywords per row (gold "
            f"{scores['mean_gold']}); per fold {scores['per_fold']}; {scores.get('fallback_rows', 0)} row(s) fell "
            f"back from generation to the extractor; train {scores['train_seconds']} s, predict "
            f"{scores['predict_seconds']} s")]
    else:
        blocks.append(_note("no CV results in this run: run `python -m kit cv --target` with its settings"))
    if run.oof.is_file():
        frame = read_csv(run.oof).head(KEYWORD_ROWS)
        blocks += [_table(["id", "gold", "predicted", "exact F1", "partial F1"],
                          [[r["id"], r["true"], r["predicted"], r["exact_f1"], r["partial_f1"]]
                           for r in frame.to_dict("records")]),
                   _note(f"the first {len(frame)} held-out rows")]
    return _run(number, entry, blocks)


def scores_view(number, entry):
    """A run of a number task or of several label columns: its held-out scores, its CV scores (with
    the cut points or per-column thresholds tuned on OOF rows), each column's, some OOF rows, losses."""
    run = Run(entry["path"])
    scores = _read_json(run.cv_scores) or {}
    summary = (f"model {entry['model']}, head {entry['head']}, settings {settings_text(entry['settings'])}; "
               f"created {entry['created']}; {entry['path']}")
    blocks = [_note(summary), *held_out_scores(entry)]
    names = [name for name in (*NUMBER_METRICS, *MULTI_LABEL_METRICS) if _number(scores.get(name)) is not None]
    if names:
        blocks.append(_table(["metric (OOF)", "value"], [[name, f"{scores[name]:.4f}"] for name in names]))
        tuned = scores.get("cut_points") or scores.get("tuned_thresholds")
        if tuned is not None:
            what = "cut points" if "cut_points" in scores else "per-column thresholds"
            blocks.append(_note(f"{entry['metric']} {scores['tuned_score']:.4f} at the {what} tuned on these OOF "
                                f"rows, {tuned} (optimistic: tuned on the rows it is scored on)"))
        blocks.append(_note(f"{scores.get('rows')} held-out rows; per fold {scores.get('per_fold')}"))
    else:
        blocks.append(_note("no CV results in this run: run `python -m kit cv` with its settings"))
    columns = scores.get("per_column") or {}
    if columns:
        blocks.append(_table(["column", "positives", "AUC", "F1 at 0.5"],
                             [[c, v["positives"], "-" if v["auc"] is None else f"{v['auc']:.4f}", f"{v['f1']:.4f}"]
                              for c, v in columns.items()]))
    if run.oof.is_file():
        frame = read_csv(run.oof).head(KEYWORD_ROWS)
        blocks += [_table(list(frame.columns), frame.values.tolist()), _note(f"the first {len(frame)} held-out rows")]
    return _run(number, entry, [*blocks, *_loss_blocks(run, entry)])


def run_view(number, entry, split):
    """One run's sections; a section that cannot be drawn says why instead of failing the page."""
    if entry["metric"] in KEYWORD_METRICS:
        return keyword_view(number, entry)
    if entry["task"] != "label":
        return scores_view(number, entry)
    try:
        data = RunData(entry, split)
    except (KitError, Skip, ValueError, KeyError) as error:
        return _run(number, entry, [_note(error, "warn")])
    sections = []
    for suffix, heading, build, binary_only, needs_oof in SECTIONS:
        if binary_only and not data.binary:
            continue
        if needs_oof and data.oof is None:
            blocks = [_note("no CV results (oof.csv) in this run: run `python -m kit cv` with its settings")]
        else:
            try:
                blocks = build(data)
            except (KitError, Skip, ValueError, KeyError, IndexError, TypeError) as error:
                blocks = [_note(f"could not draw this section: {error}", "warn")]
        sections.append({"id": suffix, "heading": heading, "wide": suffix == "wrong", "blocks": blocks})
    score = (f"{entry['metric']} {entry['score']:.4f}" if _finite(entry["score"]) else "no CV score")
    summary = (f"model {entry['model']}, head {entry['head']}, settings {settings_text(entry['settings'])}; "
               f"{score}; created {entry['created']}; {entry['path']}")
    return _run(number, entry, [_note(summary), *held_out_scores(entry)], sections)


def held_out_scores(entry):
    """A note per predicted split whose labelled copy the spec names in [answers]: the run's score
    on it (rows nobody trained on), as `kit score --split` computes it."""
    path = entry["spec"].get("path")
    if not entry["predicted"] or not path or not Path(path).is_file():
        return []
    try:
        spec = load_spec(path)
    except KitError:
        return []
    notes = []
    for split in sorted(set(entry["predicted"]) & set(spec.answers)):
        try:
            result = score_file(spec, Run(entry["path"]).predictions(split), spec.answers[split])
        except KitError as error:
            notes.append(_note(f"{split}: not scored against its [answers] file: {error}", "warn"))
            continue
        notes.append(_note(f"{split} (its labelled copy in the spec's [answers]): {result['metric']} "
                           f"{result[result['metric']]:.4f} on {result['rows']} rows"))
    return notes


def render(groups, chosen, split=None, notices=()):
    """The whole page as one string: CSS inline, images as data URIs, no script, no link out."""
    return TEMPLATES.get_template("report.html.j2").render(
        title="kit report: " + ", ".join(sorted({e["spec"]["name"] for e in chosen})),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        leaderboard=leaderboard_view(groups, chosen),
        runs=[run_view(n, entry, split) for n, entry in enumerate(chosen, 1)],
        notices=[str(n) for n in notices]) + "\n"


def write_report(run_dirs, spec=None, out=REPORT, split=None, runs=None, top=TOP_RUNS):
    """Write the HTML report and return its path. run_dirs: the run folders to report on; empty:
    the `top` best runs of `spec` (a Spec, a spec file or a spec name) by CV score, and the run that
    predicted last (the one behind the latest submission) when it is not among them. The leaderboard
    shows every run of the chosen runs' specs in `runs` (default: the first run folder's parent)."""
    run_dirs = [Path(d) for d in run_dirs or []]
    runs_dir = Path(runs) if runs else (run_dirs[0].parent if run_dirs else RUNS)
    entries, notices = collect_runs(runs_dir) if runs_dir.is_dir() or not run_dirs else ([], [])
    by_path = {Path(e["path"]).resolve(): e for e in entries}
    if run_dirs:
        chosen = []
        for directory in run_dirs:
            entry = by_path.get(directory.resolve())
            if entry is None:                           # a run folder outside runs_dir
                try:
                    entry = read_run(directory, notices)
                except Skip as skip:
                    raise KitError(f"report: {skip}") from None
                entries.append(entry)
            chosen.append(entry)
    else:
        if spec is None:
            raise KitError("report: name the runs to report on, or give --spec")
        mine = select(entries, spec)
        chosen = [e for e in rank(mine) if _finite(e["score"])][:top]
        submitted = last_predicted(mine)          # the run behind the latest submission, scored or not
        if submitted is not None and submitted not in chosen:
            chosen.append(submitted)
        if not chosen:
            where = getattr(spec, "path", spec)
            raise KitError(f"no cross-validated run of {where} in {runs_dir}/: run `python -m kit cv --spec {where}` "
                           "first, or name runs")
    keys = {spec_key(e) for e in chosen}
    groups = [g for g in group_by_spec(entries) if spec_key(g["runs"][0]) in keys]
    write_text(out, render(groups, chosen, split, notices))
    return Path(out)


# -- the commands -------------------------------------------------------------------------------------


