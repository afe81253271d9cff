"""The leaderboard levers: pseudo-labels (`--pseudo RUN[:SPLIT]`) and distillation (`--teacher RUN`).

Both learn from another run's probabilities. Whatever is read is checked (columns, ids, values)
and fingerprinted into the student's run key (TrainArgs.pseudo_fingerprint / teacher_fingerprint),
so a retrained teacher gives the student a new run folder, never a stale one.

`kit train` reads the teacher's files: `predictions-<split>.csv` for pseudo-labels and
`oof.csv` for the training rows' teacher probabilities (a `kit blend` folder has both too).

`kit cv` must not let fold k learn anything a model made from fold k's held-out labels: the
teacher's full-train model, its fold ensemble and its other folds' models all saw them. So under
`kit cv` the teacher must be a `kit cv --keep-models` run on exactly these folds, and fold k's
pseudo-labels and teacher probabilities come from the teacher's fold-k model alone, whose
training rows are fold k's training rows. (Its oof.csv is not used there: the OOF probability of
a row in fold j comes from a model that was trained on fold k.) Those per-fold predictions are
cached in the teacher's folder, keyed by the fold model's id and the rows, so the next CV reuses
them. A `kit blend` of such runs teaches fold k with its members' fold-k models, weighted by
weights fitted again on the OOF rows outside fold k.
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kit.core import dist
from kit.core.errors import KitError
from kit.core.files import write_json
from kit.core.hashing import file_fingerprint, fingerprint
from kit.core.logs import log
from kit.core.settings import TrainArgs
from kit.evaluation.blending import combine, fit_weights
from kit.inputs.data import id_key, join_rows, load_rows, read_csv
from kit.models.base import Estimator
from kit.models.registry import load_model
from kit.runs.folder import RUNS, check_trained_on, load_run
from kit.workflows.blend import read_runs

DEFAULTS = TrainArgs()
LEVER_FIELDS = ("pseudo", "pseudo_threshold", "pseudo_soft", "pseudo_fingerprint", "teacher", "kl_weight",
                "temperature", "teacher_fingerprint")
PREDICT_MODE = "score"        # the teacher's label probabilities, whatever its head


def used(train_args):
    return bool(train_args.pseudo or train_args.teacher)


def without_levers(train_args):
    """The same training settings with both levers off (the TF-IDF baseline row of `kit cv`)."""
    return replace(train_args, **{name: getattr(DEFAULTS, name) for name in LEVER_FIELDS})


def refuse_unless_supported(column, train_args):
    """A column whose task learns no label probabilities (a [targets] column, a number) takes no lever."""
    if not column.takes_levers and train_args != without_levers(train_args):
        raise KitError(f"--pseudo/--teacher learn label probabilities, which {column} does not have; "
                       "train it without them")


# -- checks before any work -------------------------------------------------------------------

def check(model, train_args):
    """Settings that need a lever that is off, and heads that cannot learn what is asked."""
    if not train_args.pseudo and (train_args.pseudo_soft or train_args.pseudo_threshold != DEFAULTS.pseudo_threshold):
        raise KitError("--pseudo-threshold/--pseudo-soft need --pseudo RUN[:SPLIT]")
    if not train_args.teacher and (train_args.kl_weight != DEFAULTS.kl_weight
                                   or train_args.temperature != DEFAULTS.temperature):
        raise KitError("--kl-weight/--kd-temperature need --teacher RUN")
    soft, teacher = bool(train_args.pseudo and train_args.pseudo_soft), bool(train_args.teacher)
    model.check_levers(soft, teacher)


def parse_pseudo(value):
    """RUN[:SPLIT] -> (RUN, SPLIT); SPLIT defaults to test."""
    name, colon, split = value.rpartition(":")
    if not colon:
        return value, "test"
    if not name or not split:
        raise KitError(f"--pseudo {value!r}: write RUN or RUN:SPLIT")
    return name, split


def _pseudo_split(spec, value):
    """(run name, split, the split's rows); a split must not be the training file itself."""
    name, split = parse_pseudo(value)
    if split != "train" and split not in spec.splits:
        raise KitError(f"--pseudo {value}: {spec.path} has no split {split!r}; [splits] has {sorted(spec.splits)}")
    path = spec.split_path(split)
    if Path(path).resolve() == Path(spec.train).resolve():
        raise KitError(f"--pseudo {value}: split {split!r} is the training file {spec.train}; pseudo-labels come "
                       "from unlabelled split rows only")
    return name, split, load_rows(spec, split)[0]


# -- reading probabilities --------------------------------------------------------------------

def read_probabilities(path, spec, option):
    """{id key: probability per label} from a kit CSV (predictions-<split>.csv, oof.csv):
    columns id and p_<label>; every value finite and non-negative, every row summing above 0."""
    path = Path(path)
    frame = read_csv(path)
    columns = ["id", *(f"p_{label}" for label in spec.labels)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{option}: {path} lacks column(s) {missing}; was it made for this spec's labels "
                       f"{spec.labels}?")
    try:
        probs = frame[columns[1:]].astype(float).to_numpy()
    except ValueError as error:
        raise KitError(f"{option}: {path}: a probability is not a number ({error})") from None
    bad = np.flatnonzero(~np.isfinite(probs).all(1) | (probs < 0).any(1) | ~(probs.sum(1) > 0))
    if len(bad):
        raise KitError(f"{option}: {path}: line {bad[0] + 2} holds probabilities that are negative, missing or "
                       "all zero")
    ids = [id_key(i) for i in frame["id"]]
    if len(set(ids)) != len(ids):
        raise KitError(f"{option}: {path}: an id appears twice")
    return dict(zip(ids, probs))


def aligned(lookup, ids, labels):
    """(probabilities in the order of ids, how many ids have none, how many listed ids are not in ids)."""
    keys = [id_key(i) for i in ids]
    missing = sum(k not in lookup for k in keys)
    extra = len(set(lookup) - set(keys))
    probs = np.array([lookup[k] for k in keys if k in lookup], dtype=float).reshape(-1, len(labels))
    return probs, missing, extra


def normalised(probs):
    """Target vectors that sum to 1 (the CSV rounds each probability to 6 decimals)."""
    probs = np.asarray(probs, dtype=float)
    return probs / probs.sum(1, keepdims=True)


def _digest(ids, probs):
    return fingerprint([str(i) for i in ids], np.round(np.asarray(probs, dtype=float), 6).tolist())


def teacher_oof(spec, rows, name, runs=RUNS):
    """kit train: every training row's teacher probabilities from RUN's oof.csv."""
    run = load_run(name, runs)
    check_trained_on(run, spec, f"--teacher {name}")      # ids alone do not say what the labels mean
    if not run.oof.is_file():
        raise KitError(f"--teacher {name}: {run.oof} not found; run `python -m kit cv` with the teacher's settings "
                       "(or `kit blend`) first")
    probs, missing, extra = aligned(read_probabilities(run.oof, spec, f"--teacher {name}"), rows.ids, spec.labels)
    if missing:
        raise KitError(f"--teacher {name}: {run.oof} has no probability for {missing} of {len(rows)} training rows "
                       "(a --holdout CV predicts only its held-out part); distil from a k-fold `kit cv` run")
    if extra:
        raise KitError(f"--teacher {name}: {run.oof} lists {extra} id(s) that are not in {spec.train}; was it "
                       "cross-validated on other training data?")
    log(f"teacher: {len(rows)} training rows' probabilities from {run.oof}")
    return normalised(probs), _digest(rows.ids, probs)


def split_predictions(spec, split, split_rows, name, runs=RUNS):
    """kit train: RUN's predictions-<split>.csv (the path, the probabilities in the split's row order)."""
    run = load_run(name, runs)
    path = run.predictions(split)
    option = f"--pseudo {name}:{split}"
    check_trained_on(run, spec, option)      # the split's ids match whatever the run learned
    if not path.is_file():
        raise KitError(f"{option}: {path} not found; run `python -m kit predict --split {split} --run {name}` first")
    probs, missing, extra = aligned(read_probabilities(path, spec, option), split_rows.ids, spec.labels)
    if missing or extra:
        raise KitError(f"{option}: {path} does not list the rows of {spec.split_path(split)} ({missing} missing, "
                       f"{extra} unknown); run `python -m kit predict --split {split} --run {name}` again")
    return path, probs


# -- pseudo rows -----------------------------------------------------------------------------

def select_pseudo(split_rows, probs, threshold, soft=False, teacher=False):
    """(the split rows whose top probability reaches threshold, labelled with its argmax, their
    positions in the split). With soft their probability vector is the target; with teacher it
    is also their teacher's probabilities."""
    probs = np.asarray(probs, dtype=float).reshape(len(split_rows), -1)
    keep = np.flatnonzero(probs.max(1) >= threshold).tolist() if len(split_rows) else []
    vectors = normalised(probs[keep]).tolist() if keep else []
    chosen = replace(split_rows.subset(keep), labels=probs[keep].argmax(1).tolist() if keep else [],
                     soft=vectors if soft else None, teacher=vectors if teacher else None)
    return chosen, keep


def label_counts(spec, rows):
    counts = np.bincount(rows.labels, minlength=len(spec.labels)) if len(rows) else np.zeros(len(spec.labels), int)
    return {label: int(n) for label, n in zip(spec.labels, counts)}


def _log_pseudo(spec, extra, split, threshold, source, probs):
    counts = label_counts(spec, extra)
    log(f"pseudo: {len(extra)} of {len(probs)} {split} rows reach p >= {threshold} in {source}; added per label: "
        + ", ".join(f"{label}: {n}" for label, n in counts.items()))
    if len(probs) and not len(extra):     # e.g. a 5-class TF-IDF whose probabilities stay flat
        log(f"warning: no pseudo-label: the highest top probability in {source} is {np.max(probs):.3f}; "
            "this fit learns from the labelled rows only (lower --pseudo-threshold, or pseudo-label from a "
            "sharper run)")
    return counts


def _pseudo_digest(split, split_rows, probs, keep):
    """The pseudo rows actually used: their ids, texts and probabilities."""
    probs = np.asarray(probs, dtype=float)[keep]
    return fingerprint(split, [split_rows.ids[i] for i in keep], [split_rows.texts[i] for i in keep],
                       np.round(probs, 6).tolist())


# -- kit train --------------------------------------------------------------------------------

def for_train(column, rows, model, train_args, runs=RUNS):
    """kit train: (training rows with the levers applied, train_args with the fingerprints of
    the probabilities used, figures for train_metrics.json)."""
    refuse_unless_supported(column, train_args)
    check(model, train_args)
    spec = column.spec
    teacher_digest = pseudo_digest = None
    stats = {}
    if not used(train_args):
        return rows, replace(train_args, pseudo_fingerprint=None, teacher_fingerprint=None), stats
    if train_args.teacher:
        probs, teacher_digest = teacher_oof(spec, rows, train_args.teacher, runs)
        rows = replace(rows, teacher=probs.tolist())
    if train_args.pseudo:
        name, split, split_rows = _pseudo_split(spec, train_args.pseudo)
        path, probs = split_predictions(spec, split, split_rows, name, runs)
        extra, keep = select_pseudo(split_rows, probs, train_args.pseudo_threshold, train_args.pseudo_soft,
                                    bool(train_args.teacher))
        stats["pseudo_rows"] = _log_pseudo(spec, extra, split, train_args.pseudo_threshold, path, probs)
        pseudo_digest = _pseudo_digest(split, split_rows, probs, keep)
        rows = join_rows(rows, extra)
    return rows, replace(train_args, pseudo_fingerprint=pseudo_digest, teacher_fingerprint=teacher_digest), stats


# -- kit cv ---------------------------------------------------------------------------------

def require_same_folds(run, spec, fold, option):
    """RUN must be a `kit cv --keep-models` run of this training file with exactly these folds."""
    protocol = (f"{option} under kit cv: fold k may only learn from a model that never saw fold k's held-out "
                f"labels, so {run.name} must be a `kit cv --keep-models` run on exactly this CV's folds")
    if not run.fold_models:
        raise KitError(f"{protocol}; it has no fold models (a train-only run, or a CV without --keep-models, works with kit train only)")
    if run.config.get("data", {}).get("fingerprint") != file_fingerprint(spec.train):
        raise KitError(f"{protocol}; it was cross-validated on another training file than {spec.train}")
    if run.config.get("spec", {}).get("resolved", {}).get("labels") != list(spec.labels):
        raise KitError(f"{protocol}; its labels are not {spec.labels}")
    numbers = sorted(set(fold.tolist()) - {-1})
    theirs = list(run.fold_results())
    if theirs != numbers:
        raise KitError(f"{protocol}; it has {len(theirs)} folds, this CV {len(numbers)} ({_fold_settings(run)})")
    for number in numbers:
        why = _why_not(run, number, np.flatnonzero(fold == number).tolist())
        if why:
            raise KitError(f"{protocol}; its fold {number + 1} {why} ({_fold_settings(run)}); use its "
                           "--folds/--holdout/--fold-seed, or re-run its CV with this CV's and --keep-models --overwrite")


def _why_not(run, number, held_out):
    """Why RUN's fold `number` is not a kept model of exactly these held-out rows, or None."""
    try:
        result = json.loads(run.fold_result(number).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "has no readable result"
    if result.get("index") != held_out:
        return "holds other rows"
    if not run.has_fold_model(number):
        return "has no kept model"
    if not result.get("model_id"):
        return "does not name the model it kept (a CV without --keep-models, or from before the levers)"
    if result["model_id"] != Estimator.read_model_file(run.fold_model(number)).get("model_id"):
        return "kept a model of an earlier CV, not of its current folds"
    return None


def _fold_settings(run):
    try:
        config = json.loads(run.cv_scores.read_text()).get("config", {})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "its fold settings are not recorded"
    return f"it used folds {config.get('folds')}, holdout {config.get('holdout')}, fold seed {config.get('fold_seed')}"


def fold_predictions(run, number, rows, what, trust_remote_code=False):
    """RUN's fold-`number` model's probabilities for rows, cached in RUN/cv/ under the model's
    id and the rows' fingerprint (a refit fold model, or other rows, predicts again)."""
    directory = run.fold_model(number)
    model_id = Estimator.read_model_file(directory).get("model_id")
    key = fingerprint(model_id, rows.ids, rows.texts, PREDICT_MODE)
    cache = run.cv_dir / f"lever-fold-{number}-{what}.json"
    try:
        saved = json.loads(cache.read_text()) if cache.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = {}
    if saved.get("key") == key:
        return np.asarray(saved["probs"], dtype=float).reshape(len(rows), -1)
    log(f"levers: predicting {len(rows)} {what} rows with {directory}")
    probs = load_model(directory, trust_remote_code).predict(rows, PREDICT_MODE).probs
    if dist.is_main():
        try:
            write_json(cache, {"key": key, "model_id": model_id, "rows": len(rows), "probs": probs.tolist()})
        except OSError as error:      # a teammate's read-only run: predict again next time
            log(f"levers: could not cache {cache} ({error.strerror})")
    return probs


def fold_source(spec, name, fold, option, runs=RUNS, trust_remote_code=False):
    """(predict(number, rows, what) -> probabilities from models that never saw fold `number`'s
    held-out labels, describe(number) -> where they come from) for RUN under `kit cv`.

    A `kit blend` of `kit cv --keep-models` runs works too: fold k combines its members' fold-k
    models, with weights refitted on the OOF rows outside fold k (the blend's own weights were
    fitted on fold k's labels as well)."""
    source = load_run(name, runs)
    if source.config.get("model", {}).get("model") != "blend":
        require_same_folds(source, spec, fold, option)
        return (lambda number, rows, what: fold_predictions(source, number, rows, what, trust_remote_code),
                source.fold_model)
    names = source.config["model"].get("runs") or []
    members, _, _, truth, oof_fold, probs = read_runs(spec, names, runs)
    for member in members:
        require_same_folds(member, spec, fold, f"{option} (a blend of {', '.join(names)})")
    weights = {number: _weights_without(spec, number, truth, oof_fold, probs)
               for number in sorted(set(fold.tolist()) - {-1})}

    def predict(number, rows, what):
        return combine([fold_predictions(m, number, rows, what, trust_remote_code) for m in members], weights[number])

    def describe(number):
        shares = ", ".join(f"{m.name} {w:.2f}" for m, w in zip(members, weights[number]))
        return f"{source.name} fold {number + 1} ({shares}; weights fitted without fold {number + 1})"
    return predict, describe


def _weights_without(spec, number, truth, oof_fold, probs):
    """The blend weights fitted on the members' OOF rows outside fold `number`."""
    outside = oof_fold != number
    return fit_weights(spec.metric, truth[outside], [p[outside] for p in probs], spec.scale)[0]


@dataclass
class FoldLevers:
    """Per fold of `kit cv`: the pseudo rows and the training rows' teacher probabilities, all
    from the teacher's model of that fold."""
    pseudo: dict            # fold -> (pseudo Rows, their token ids or None)
    teacher: dict           # fold -> teacher probabilities of the fold's training rows, in order
    counts: dict            # fold -> pseudo rows added per label

    def training(self, number, rows, encoded):
        """(fold `number`'s training rows with the levers applied, their encoding, figures)."""
        stats = {}
        if number in self.teacher:
            if len(self.teacher[number]) != len(rows):
                raise RuntimeError("levers: teacher probabilities and training rows differ in number")
            rows = replace(rows, teacher=self.teacher[number])
        if number in self.pseudo:
            extra, extra_ids = self.pseudo[number]
            rows = join_rows(rows, extra)
            if encoded is not None:
                ids = encoded[0] + extra_ids
                encoded = (ids, {**encoded[1], "rows": len(ids), "pseudo_rows": len(extra_ids),
                                 "mean_tokens": round(float(np.mean([len(s) for s in ids])), 1)})
            stats["pseudo_rows"] = self.counts[number]
        return rows, encoded, stats


def for_cv(column, rows, fold, model, train_args, runs=RUNS, trust_remote_code=False):
    """kit cv: (FoldLevers or None, train_args with the fingerprints). Rank 0 predicts with the
    teacher's fold models first and caches; the other ranks then read its caches."""
    refuse_unless_supported(column, train_args)
    check(model, train_args)
    spec = column.spec
    if not used(train_args):
        return None, replace(train_args, pseudo_fingerprint=None, teacher_fingerprint=None)
    if dist.active() and not dist.is_main():
        dist.barrier()
    try:
        return _for_cv(spec, rows, fold, model, train_args, runs, trust_remote_code)
    finally:
        if dist.active() and dist.is_main():
            dist.barrier()


def _for_cv(spec, rows, fold, model, train_args, runs, trust_remote_code):
    numbers = sorted(set(fold.tolist()) - {-1})
    pseudo, teacher, counts, digests = {}, {}, {}, {"pseudo": [], "teacher": []}
    if train_args.teacher:
        predict, _ = fold_source(spec, train_args.teacher, fold, f"--teacher {train_args.teacher}", runs,
                                 trust_remote_code)
        for number in numbers:
            index = np.flatnonzero(fold != number)
            probs = predict(number, rows.subset(index), "train")
            teacher[number] = normalised(probs).tolist()
            digests["teacher"].append(_digest([rows.ids[i] for i in index], probs))
    if train_args.pseudo:
        name, split, split_rows = _pseudo_split(spec, train_args.pseudo)
        predict, describe = fold_source(spec, name, fold, f"--pseudo {train_args.pseudo}", runs, trust_remote_code)
        encoded = model.encode(split_rows)
        split_ids = encoded[0] if encoded else None
        for number in numbers:
            probs = predict(number, split_rows, f"split-{split}")
            extra, keep = select_pseudo(split_rows, probs, train_args.pseudo_threshold, train_args.pseudo_soft,
                                        bool(train_args.teacher))
            pseudo[number] = (extra, None if split_ids is None else [split_ids[i] for i in keep])
            counts[number] = _log_pseudo(spec, extra, split, train_args.pseudo_threshold, describe(number),
                                         probs)
            digests["pseudo"].append(_pseudo_digest(split, split_rows, probs, keep))
    filled = replace(train_args, pseudo_fingerprint=fingerprint("cv", digests["pseudo"]) if train_args.pseudo else None,
                     teacher_fingerprint=fingerprint("cv", digests["teacher"]) if train_args.teacher else None)
    return FoldLevers(pseudo, teacher, counts), filled
