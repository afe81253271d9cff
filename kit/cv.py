"""Cross-validation a competitor can trust: exactly the train + predict path, on folds.

Each fold fits a fresh model on the other folds and predicts its held-out rows with the same
code as `kit predict`; nothing is fitted on held-out rows (the TF-IDF vocabulary, the LLM's
adapter and the decision threshold are all learned on training rows or on OOF afterwards).
Rows are tokenised once per run; finished folds are saved, so a re-run resumes.
"""
import json
import shutil
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from . import dist
from .data import atomic_write, load_rows, write_json
from .errors import KitError
from .levers import for_cv
from .logs import log
from .metrics import decide, format_report, metric_value, report, tune_threshold
from .models import ModelArgs, Prediction, Task, make_model
from .pipeline import fit_timed, predictions_frame
from .runs import RUNS, fingerprint, open_run
from .train import TrainArgs


def assign_folds(labels, folds=5, seed=0, holdout=None):
    """Fold number per row (stratified). With holdout, one split: fold 0 is the held-out part
    and -1 marks rows that are only ever trained on."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if holdout is not None:
        if not 0 < holdout < 1:
            raise KitError(f"--holdout {holdout}: must be a fraction between 0 and 1")
        _, held = train_test_split(np.arange(len(labels)), test_size=holdout, random_state=seed,
                                   stratify=labels if counts[counts > 0].min() >= 2 else None)
        fold = np.full(len(labels), -1)
        fold[held] = 0
        return fold
    if folds < 2:
        raise KitError(f"--folds {folds}: need at least 2 (or use --holdout)")
    smallest = counts[counts > 0].min()
    if smallest < folds:
        raise KitError(f"--folds {folds}: the rarest label has only {smallest} rows")
    fold = np.zeros(len(labels), dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for number, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held] = number
    return fold


def _saved_fold(path, key):
    """A finished fold's result, only when it was made by exactly this CV configuration."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = {}
    if saved.get("key") != key:
        log(f"cv: {path} was made with other settings; fitting that fold again")
        return None
    return saved


def _run_fold(make, rows, encoded, fold, number, mode, run, key, keep_models=False, levers=None):
    """Fit on every row outside the fold, predict the fold; saved so a re-run skips it. With
    keep_models the fold's model is kept too (a fold ensemble predicts with them). levers
    (kit/levers.py) add this fold's pseudo rows and teacher probabilities to its training rows."""
    path = run.fold_result(number)
    saved = _saved_fold(path, key)
    kept = (run.fold_model(number) / "kit_model.json").is_file()
    if saved is not None and (kept or not keep_models):
        log(f"cv: fold {number + 1} already done, reused ({path})")
        return saved
    train_index = np.flatnonzero(fold != number)
    held_index = np.flatnonzero(fold == number)
    model = make()
    pick = (lambda index: ([encoded[0][i] for i in index], encoded[1])) if encoded else (lambda index: None)
    checkpoint = run.fold_checkpoint(number)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train_rows, train_encoded, lever_stats = rows.subset(train_index), pick(train_index), {}
    if levers is not None:
        train_rows, train_encoded, lever_stats = levers.training(number, train_rows, train_encoded)
    stats = fit_timed(model, train_rows, train_encoded, checkpoint, resume=True,
                      checkpoint_key=fingerprint(key, number))
    stats.update(lever_stats)
    start = time.time()
    prediction = model.predict(rows.subset(held_index), mode, encoded=pick(held_index))
    seconds = time.time() - start
    # model_id names the kept model, so a reader (kit/levers.py) can tell it from a model an
    # earlier CV of other folds left in the folder
    result = {"key": key, "fold": number, "index": held_index.tolist(), "probs": prediction.probs.tolist(),
              "model_id": model.model_id if keep_models else None,
              "decided": prediction.decided, "answers": prediction.answers,
              "parsed": None if prediction.parsed is None else prediction.parsed.tolist(),
              "stats": {**stats, "loss_log": getattr(model, "loss_log", []), "predict_seconds": round(seconds, 1),
                        "predict_rows_per_s": round(len(held_index) / seconds, 2) if seconds else None,
                        **{f"predict_{k}": v for k, v in prediction.stats.items() if k.startswith("frozen_")}}}
    if keep_models:
        staging = run.cv_dir / f".fold-{number}-model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save(staging)
        shutil.rmtree(run.fold_model(number), ignore_errors=True)
        staging.rename(run.fold_model(number))
    write_json(path, result)
    checkpoint.unlink(missing_ok=True)
    return result


def cross_validate(spec, model_args, train_args, folds=5, holdout=None, fold_seed=0, mode="score",
                   name=None, overwrite=False, trust_remote_code=False, runs=RUNS, keep_models=False):
    """Run CV for one configuration; returns the scores dict (also saved in the run folder).
    The folds come from fold_seed alone, so configurations that differ in their training seed
    are scored on the same folds."""
    started = time.time()
    rows, _ = load_rows(spec, "train")
    fold = assign_folds(rows.labels, folds, fold_seed, holdout)
    task = Task.from_spec(spec)
    encoder = make_model(task, model_args, train_args, trust_remote_code)
    model_args = encoder.resolve_args()    # `auto` -> this device's values, part of the run's key
    # pseudo rows and teacher probabilities per fold, from the teacher's fold models only
    levers, train_args = for_cv(spec, rows, fold, encoder, train_args, runs, trust_remote_code)
    run = open_run(spec, model_args, train_args, name, overwrite, runs)
    key = fingerprint(run.key, fold.tolist(), mode)
    def make():
        model = make_model(task, model_args, train_args, trust_remote_code)
        model.data_parallel = False      # under N ranks, each rank fits whole folds of its own
        return model
    # once, for every fold (with few-shot examples each fold's prompt is its own: encoded by the fold)
    encoded = encoder.encode(rows) if hasattr(encoder, "encode") and not task.few_shot else None
    if encoded:
        log(f"cv: {encoded[1]['rows']} rows tokenised once, {encoded[1]['mean_tokens']} tokens per row, "
            f"{encoded[1]['truncated_rows']} truncated to {task.max_length}")
    numbers = sorted(set(fold.tolist()) - {-1})
    results = []
    # N ranks (torchrun / accelerate launch): folds side by side, fold k on rank k mod N
    for number in numbers[dist.rank()::dist.world_size()]:
        log(f"cv: fold {number + 1} of {len(numbers)} ({run.name})")
        results.append(_run_fold(make, rows, encoded, fold, number, mode, run, key, keep_models, levers))
    results = sorted((r for part in dist.gather(results) for r in part), key=lambda r: r["fold"])
    if not dist.is_main():
        return None
    scores = summarise(spec, rows, fold, results, run)
    scores["wall_seconds"] = round(time.time() - started, 1)
    scores["run_key"], scores["cv_key"] = run.key, key
    scores["config"] = {"name": run.name, "model": model_args.model, "head": model_args.head,
                        "folds": folds, "holdout": holdout, "fold_seed": fold_seed, "seed": train_args.seed,
                        "mode": mode}
    write_json(run.cv_scores, scores)
    return scores


def summarise(spec, rows, fold, results, run):
    """OOF probabilities -> the report, per-fold scores, tuned threshold, oof.csv."""
    n, k = len(rows), len(spec.labels)
    probs, parsed = np.zeros((n, k)), np.full(n, -1)
    decided, answers = [""] * n, [""] * n
    for result in results:
        index = np.asarray(result["index"])
        probs[index] = result["probs"]
        if result["parsed"] is not None:
            parsed[index] = result["parsed"]
        for i, position in enumerate(index):
            decided[position] = result["decided"][i]
            answers[position] = (result["answers"] or [""] * len(index))[i]
    held = np.flatnonzero(fold >= 0)
    truth = np.asarray(rows.labels)
    binary = k == 2
    scores = report(truth[held], probs[held], spec.labels, spec.metric, parsed[held])
    per_fold = []
    for result in results:
        index = np.asarray(result["index"])
        predicted = decide(probs[index], parsed[index], 0.5 if binary else None)
        per_fold.append(metric_value(spec.metric, truth[index], predicted, probs[index]))
    scores["per_fold"] = [round(v, 4) for v in per_fold]
    scores["fold_mean"] = round(float(np.mean(per_fold)), 4)
    scores["fold_std"] = round(float(np.std(per_fold)), 4)
    if binary:
        threshold, tuned = tune_threshold(truth[held], probs[held, 1], spec.metric if spec.metric != "auc" else "f1")
        scores["tuned_threshold"], scores["tuned_score"] = round(threshold, 4), round(tuned, 4)
    fallback = sum(d == "fallback" for d in decided)
    scores["fallback_rows"] = fallback
    stats = [r["stats"] for r in results]
    scores["train_seconds"] = round(sum(s["train_seconds"] for s in stats), 1)
    scores["predict_seconds"] = round(sum(s["predict_seconds"] for s in stats), 1)
    scores["train_rows_per_s"] = round(float(np.mean([s["train_rows_per_s"] or 0 for s in stats])), 2)
    scores["predict_rows_per_s"] = round(float(np.mean([s["predict_rows_per_s"] or 0 for s in stats])), 2)
    frozen = frozen_totals(stats)
    if frozen:
        scores["frozen"] = frozen
    labels = decide(probs, parsed, 0.5 if binary else None)
    oof = predictions_frame(spec, rows.ids, Prediction(probs, decided, answers if any(answers) else None), labels)
    oof.insert(1, "true", [spec.labels[i] for i in truth])
    oof["fold"] = fold
    oof = oof.iloc[held]
    atomic_write(run.oof, lambda tmp: oof.to_csv(tmp, index=False))
    return scores


def frozen_totals(stats):
    """What the folds' frozen lower-block passes reused from the state cache and computed
    (kit/states.py), training and prediction together; {} when no fold used the cache."""
    totals = {"rows_computed": 0, "rows_reused": 0, "seconds": 0.0}
    for s in stats:
        for prefix in ("", "predict_"):
            totals["rows_computed"] += s.get(f"{prefix}frozen_rows_computed") or 0
            totals["rows_reused"] += s.get(f"{prefix}frozen_rows_reused") or 0
            totals["seconds"] += s.get(f"{prefix}frozen_seconds") or 0
    totals["seconds"] = round(totals["seconds"], 1)
    return totals if totals["rows_computed"] or totals["rows_reused"] else {}


def format_scores(scores, spec):
    metric = spec.metric
    lines = [f"{scores['config']['name']}: {metric} {scores[metric]:.4f} (OOF, threshold 0.5)"
             + (f", {scores['tuned_score']:.4f} at tuned threshold {scores['tuned_threshold']}"
                if "tuned_threshold" in scores else "")
             + f"; per fold {scores['fold_mean']:.4f} ± {scores['fold_std']:.4f}",
             format_report(scores, spec.labels)]
    if scores.get("fallback_rows"):
        lines.append(f"{scores['fallback_rows']} row(s) fell back from generation to label scoring")
    lines.append(f"wall {scores['wall_seconds']} s: train {scores['train_seconds']} s "
                 f"({scores['train_rows_per_s']} rows/s), predict {scores['predict_seconds']} s "
                 f"({scores['predict_rows_per_s']} rows/s)")
    if scores.get("frozen"):
        frozen = scores["frozen"]
        lines.append(f"frozen lower blocks: {frozen['rows_computed']} row states computed, {frozen['rows_reused']} "
                     f"reused from the state cache ({frozen['seconds']} s in the frozen pass)")
    return "\n".join(lines)


def table(all_scores, spec):
    """One row per configuration: the comparison a competitor decides on."""
    metric = spec.metric
    header = f"| config | {metric} | tuned | fold mean ± std | train+predict s | train rows/s | predict rows/s |"
    lines = [header, "|" + " --- |" * 7]
    for s in all_scores:
        tuned = f"{s['tuned_score']:.4f}" if "tuned_score" in s else "-"
        lines.append(f"| {s['config']['name']} | {s[metric]:.4f} | {tuned} | {s['fold_mean']:.4f} ± "
                     f"{s['fold_std']:.4f} | {s['train_seconds'] + s['predict_seconds']:.0f} | {s['train_rows_per_s']} | "
                     f"{s['predict_rows_per_s']} |")
    return "\n".join(lines)


def verdict(all_scores, baseline, spec):
    """Say plainly when the LLM road loses to the classical baseline under this budget."""
    metric = spec.metric
    lines = []
    for s in all_scores:
        if s is baseline:
            continue
        gap = s[metric] - baseline[metric]
        word = "BEATS" if gap > 0 else "LOSES TO"
        lines.append(f"{s['config']['name']} {word} the TF-IDF baseline: {s[metric]:.4f} vs "
                     f"{baseline[metric]:.4f} ({gap:+.4f} {metric})"
                     + ("" if gap > 0 else "; under this budget, upload the baseline or train longer"))
    return "\n".join(lines)


def read_sweep(path):
    """A sweep file: [[config]] tables of option overrides, e.g. name = "lr3e-4", lr = 3e-4."""
    import tomllib
    path = Path(path)
    if not path.is_file():
        raise KitError(f"sweep file not found: {path}")
    try:
        configs = tomllib.loads(path.read_text()).get("config", [])
    except tomllib.TOMLDecodeError as error:
        raise KitError(f"{path}: not valid TOML: {error}") from None
    if not configs:
        raise KitError(f"{path}: no [[config]] tables")
    for number, config in enumerate(configs, 1):
        if "name" not in config:
            raise KitError(f"{path}: [[config]] number {number} has no name")
    return configs


SPEC_KEYS = ("instruction", "label_words", "max_length")


def _check_choices(model_changes, where):
    """The same choices the command line allows, for a sweep entry's values."""
    from .device import ATTENTION, PRECISIONS, QUANTIZE
    from .models import HEADS
    allowed = {"precision": PRECISIONS, "attention": ATTENTION, "quantize": QUANTIZE, "head": HEADS}
    for key, choices in allowed.items():
        if key in model_changes and model_changes[key] not in choices:
            raise KitError(f"{where}: {key} = {model_changes[key]!r}: choose one of {', '.join(choices)}")


def split_overrides(overrides, spec, base_model, base_train, where):
    """Apply a sweep entry's keys to copies of the spec (prompt keys), model and training args."""
    from dataclasses import fields, replace
    model_keys = {f.name for f in fields(ModelArgs)}
    train_keys = {f.name for f in fields(TrainArgs)}
    changes = {"spec": {}, "model": {}, "train": {}}
    types = {f.name: f.type for f in fields(ModelArgs) + fields(TrainArgs)}
    for key, value in overrides.items():
        if types.get(key) in (float, "float") and isinstance(value, int):
            value = float(value)      # epochs = 2 in TOML means 2.0, and fingerprints the same
        if key == "name":
            continue
        if key in SPEC_KEYS:
            changes["spec"][key] = value
        elif key in model_keys:
            changes["model"][key] = value
        elif key in train_keys:
            changes["train"][key] = value
        else:
            raise KitError(f"{where}: unknown option {key!r}; known: {sorted(model_keys | train_keys | set(SPEC_KEYS))}")
    _check_choices(changes["model"], where)
    words = changes["spec"].get("label_words")
    if words is not None:
        if set(map(str, words)) != set(spec.labels):
            raise KitError(f"{where}: label_words must map every label {spec.labels}")
        changes["spec"]["label_words"] = {str(k): str(v) for k, v in words.items()}
    return (replace(spec, **changes["spec"]), replace(base_model, **changes["model"]),
            replace(base_train, **changes["train"]))
