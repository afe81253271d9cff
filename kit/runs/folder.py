"""Run folders: the unit of trust. One module owns their names, their recorded configuration,
the fingerprints of everything reused inside them, and where each file lives.

A run is created with its effective configuration (`run.json`): the spec as resolved, every
model and training argument, the base model's identity, a fingerprint of the training data,
library versions and the device. The folder's name ends with a key over everything that
decides what the model learns, so two specs or two settings can never share (and overwrite)
a folder, and `kit train` and `kit cv` with the same settings meet in the same folder.
"""
import functools
import importlib.metadata as meta
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from kit import __version__
from kit.core import dist
from kit.core.errors import KitError
from kit.core.files import write_json, write_text, writing
from kit.core.hashing import file_fingerprint, fingerprint
from kit.core.logs import log
from kit.core.settings import RUNTIME_ARGS_MODEL
from kit.models.base import MODEL_FILE
from kit.models.embedded import base_identity

RUNS = Path("runs")
CONFIG = "run.json"
# a run name is one folder name under runs/: no separator, nothing hidden, nothing that climbs out
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NOT_KEYED_TRAIN = ("checkpoint_every", "frozen_cache_gb", "state_cache", "deadline")   # how often to save / how fast, never what is learned


def kit_identity():
    """The kit that made a run: its version, the git commit of its checkout (None outside one,
    or where git is missing) and the command line."""
    try:
        found = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"],
                               capture_output=True, text=True, timeout=10)
        commit = found.stdout.strip() if found.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": __version__, "commit": commit, "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}


def library_versions():
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "accelerate", "scikit-learn", "numpy", "pandas"):
        try:
            versions[package] = meta.version(package)
        except meta.PackageNotFoundError:
            versions[package] = None
    return versions


def device_name():
    import torch
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    return f"cpu: {torch.get_num_threads()} threads"


LEVER_KEYS = ("pseudo", "pseudo_threshold", "pseudo_soft", "pseudo_fingerprint", "teacher", "kl_weight",
              "temperature", "teacher_fingerprint")


def _keyed_train_args(train_args):
    """The training arguments that decide what is learned. Without pseudo-labels or a teacher the
    levers' settings are left out, so runs made before the levers existed keep their keys."""
    levers_on = train_args.pseudo is not None or train_args.teacher is not None
    return {k: v for k, v in asdict(train_args).items()
            if k not in NOT_KEYED_TRAIN and (levers_on or k not in LEVER_KEYS)}


def effective_config(spec, model_args, train_args):
    """Everything a run is made from; `key` covers the parts that decide what is learned."""
    model = {k: v for k, v in asdict(model_args).items() if k not in RUNTIME_ARGS_MODEL}
    train = _keyed_train_args(train_args)
    base = base_identity(model_args.model)
    data = {"path": str(spec.train), "fingerprint": file_fingerprint(spec.train)}
    if spec.extra:                # [[extra]] files are learned from too: their contents join the key
        data["extra"] = [{"path": str(e.path), "fingerprint": file_fingerprint(e.path)} for e in spec.extra]
    extra = [e["fingerprint"] for e in data.get("extra", [])]
    key = fingerprint(spec.fingerprint(), model, train, base["fingerprint"], data["fingerprint"], *extra)
    return {"key": key, "spec": {"path": str(Path(spec.path).resolve()), "name": spec.name,
                                 "fingerprint": spec.fingerprint(), "resolved": spec.describe()},
            "model": asdict(model_args), "train": {k: v for k, v in asdict(train_args).items() if k != "deadline"}, "base_model": base, "data": data,
            "kit": kit_identity(), "versions": library_versions(), "device": device_name(),
            "world_size": dist.world_size(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def default_name(spec, model_args, key):
    model = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model_args.model).name).strip(".") or "model"
    head = "" if model_args.model == "tfidf" else f"-{model_args.head}"
    return f"{spec.name}-{model}{head}-{key[:6]}"


def check_run_name(name, option="--name"):
    """A run name is one folder name (letters, digits, '.', '_', '-'), never a path."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise KitError(f"{option} {name!r}: a run name is one folder name under runs/ (letters, digits, '.', '_' "
                       "or '-', starting with a letter or digit), not a path")
    return name


class Run:
    """A run folder and what lives where in it (config: its run.json; {} to name paths only)."""

    def __init__(self, directory, config=None):
        config = config or {}
        self.directory, self.config = Path(directory), config
        self.key, self.name = config.get("key"), Path(directory).name

    model_dir = property(lambda self: self.directory / "model")
    checkpoint = property(lambda self: self.directory / "checkpoint.pt")
    train_metrics = property(lambda self: self.directory / "train_metrics.json")
    cv_dir = property(lambda self: self.directory / "cv")
    cv_scores = property(lambda self: self.directory / "cv_scores.json")
    oof = property(lambda self: self.directory / "oof.csv")
    spec_copy = property(lambda self: self.directory / "spec.toml")   # the spec file as it was trained on

    def fold_result(self, number):
        return self.cv_dir / f"fold-{number}.json"

    def fold_checkpoint(self, number):
        return self.cv_dir / f"fold-{number}.ckpt"

    def fold_model(self, number):
        return self.cv_dir / f"fold-{number}-model"

    @property
    def fold_models(self):
        """The fold models `kit cv --keep-models` kept, in fold order."""
        found = [p for p in self.cv_dir.glob("fold-*-model") if (p / MODEL_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    @property
    def merged_folds(self):
        return self.cv_dir / "merged-model"

    def predictions(self, split):
        return self.directory / f"predictions-{split}.csv"

    def predict_stats(self, split):
        return self.directory / f"predict-{split}.json"

    def predicted_splits(self):
        """{split: its predict-<split>.json} for every split a submission was written for."""
        return {p.stem[len("predict-"):]: p for p in sorted(self.directory.glob("predict-*.json"))}

    def predictions_splits(self):
        """The splits with a per-row predictions-<split>.csv, sorted."""
        return sorted(p.stem[len("predictions-"):] for p in self.directory.glob("predictions-*.csv"))

    def fold_results(self):
        """{fold number: its cv/fold-<k>.json}, in fold order."""
        found = {int(p.stem[5:]): p for p in self.cv_dir.glob("fold-*.json") if p.stem[5:].isdigit()}
        return dict(sorted(found.items()))

    @property
    def blend_file(self):
        return self.directory / "blend.json"

    def predict_progress(self, split, mode):
        return self.directory / f".predict-{split}-{mode}.progress.json"

    @property
    def has_full_model(self):
        """`kit train` saved a model of the whole training file here."""
        return (self.model_dir / MODEL_FILE).is_file()

    def has_fold_model(self, number):
        return (self.fold_model(number) / MODEL_FILE).is_file()

    @property
    def trained(self):
        return self.has_full_model or bool(self.fold_models)

    def clear_predict_progress(self):
        """A new model makes every half-finished prediction of the old one worthless."""
        for path in self.directory.glob(".predict-*.progress.json"):
            with writing(path):
                path.unlink()


def _write_config(directory, config, spec):
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG, config)
    write_text(Run(directory).spec_copy, Path(spec.path).read_text(encoding="utf-8"))


def kit_config(directory):
    """The folder's run.json when it is a kit run's (a JSON object with a key and a recorded spec);
    None for anything else: no run.json, a folder named run.json, a list, "spec": null, bad JSON."""
    try:
        config = json.loads((Path(directory) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):        # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(config, dict) or not isinstance(config.get("key"), str) or not isinstance(config.get("spec"), dict):
        return None
    if not isinstance(config["spec"].get("resolved", {}), dict) or any(
            not isinstance(config.get(section, {}), dict) for section in ("model", "train", "base_model", "data")):
        return None
    return config


def read_config(directory):
    path = Path(directory) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(f"{directory}: not a run folder (no {CONFIG}); train it with `python -m kit train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KitError(f"{path}: unreadable run configuration: {error}") from None


def _differences(old, new):
    keys = []
    for section in ("spec", "model", "train", "base_model", "data"):
        a, b = old.get(section, {}), new.get(section, {})
        for k in sorted(set(a) | set(b)):
            if k not in ("created", "path", "files") and a.get(k) != b.get(k):
                keys.append(f"{section}.{k}")
    return ", ".join(keys[:4]) or "its key"


def open_run(spec, model_args, train_args, name=None, overwrite=False, runs=RUNS):
    """The run folder for this configuration, created with its run.json if new. A folder made
    with another configuration is never reused: a one-line error, or a fresh start with
    --overwrite, which replaces only a kit run folder (never another folder, never through a link)."""
    config = effective_config(spec, model_args, train_args)
    directory = Path(runs) / (check_run_name(name) if name is not None else
                              default_name(spec, model_args, config["key"]))
    old = kit_config(directory)
    # every rank checks (so every rank raises the same error); rank 0 alone writes
    if directory.is_symlink():
        if overwrite or old is None or old.get("key") != config["key"]:
            raise KitError(f"{directory} is a symbolic link; the kit never replaces a run through a link: "
                           "pass another --name")
    elif directory.exists() and not directory.is_dir():
        raise KitError(f"{directory} exists and is not a folder; pass another --name")
    replace = False
    if old is not None:
        if old.get("key") == config["key"] and not overwrite:
            dist.barrier()
            return Run(directory, old)
        if not overwrite:
            raise KitError(f"run {directory} was made with other settings ({_differences(old, config)}); "
                           "pass another --name, or --overwrite to replace it")
        replace = True
    elif directory.is_dir() and any(directory.iterdir()):
        why = f"its {CONFIG} is not a kit run's" if (directory / CONFIG).exists() else f"no {CONFIG}"
        raise KitError(f"{directory} exists and is not a kit run folder ({why}); "
                       + ("--overwrite replaces only kit runs: " if overwrite else "") + "pass another --name")
    dist.barrier()
    if dist.is_main():
        if replace:
            log(f"run {directory}: replacing it (--overwrite)")
            shutil.rmtree(directory)
        with writing(directory):
            _write_config(directory, config, spec)
    dist.barrier()
    return Run(directory, config)


def load_run(name, runs=RUNS):
    """A run by folder name under runs/ or by path."""
    directory = Path(name) if Path(name).is_dir() and (Path(name) / CONFIG).exists() else Path(runs) / name
    if not directory.is_dir():
        raise KitError(f"run {name!r}: no such run folder in {runs}/")
    return Run(directory, read_config(directory))


def _trained_at(run):
    return run.train_metrics.stat().st_mtime if run.train_metrics.exists() else 0.0


def latest_run(spec, runs=RUNS):
    """The most recently trained run of this spec (never a run of another competition). A run is
    this spec's by what it is, not where the spec file was: the same spec name and task, and either
    the same spec file or the same spec version (its fingerprint) and training file (its
    fingerprint), so a run folder copied from another checkout or machine is found as it is."""
    if not spec.has_labels and spec.target is None:
        raise KitError(f"{spec.path} has no [columns] label, so no label model; its [targets] columns' runs are "
                       f"named {spec.name}.<column>-... (python -m kit train --target COLUMN)")
    mine = Path(spec.path).resolve()
    training_file = functools.cache(lambda: file_fingerprint(spec.train) if Path(spec.train).is_file() else None)
    candidates = []
    for config_file in sorted(Path(runs).glob(f"*/{CONFIG}")):
        config = kit_config(config_file.parent)     # a list, a folder named run.json, "spec": null: not a run
        if config is None:
            continue
        run = Run(config_file.parent, config)
        recorded = run.config["spec"]
        # the same spec file, and the same task in it: the label's runs and each [targets]
        # column's runs (named <spec>.<column>) are never taken for one another
        if recorded.get("name") == spec.name and run.trained and (
                recorded.get("path") == str(mine)
                or _spec_matches(run, spec) and _recorded_data(run)[0] == training_file()):   # made elsewhere
            candidates.append(run)
    if not candidates:
        raise KitError(f"no trained run of {spec.path} in {runs}/: run `python -m kit train --spec {spec.path}` "
                       "first, or pass --run")
    matching = [run for run in candidates if _spec_matches(run, spec)]
    return max(matching or candidates, key=_trained_at)   # a run of this spec's version first


def _spec_matches(run, spec):
    """The run was trained on this version of the spec. --max-length at training time changes
    the recorded max_length; the model keeps its own, so it is not a difference."""
    recorded = run.config.get("spec", {})
    length = recorded.get("resolved", {}).get("max_length", spec.max_length)
    return recorded.get("fingerprint") == replace(spec, max_length=length).fingerprint()


def _recorded_labels(run):
    labels = run.config.get("spec", {}).get("resolved", {}).get("labels")
    return None if labels is None else [str(label) for label in labels]


def _recorded_data(run, seen=()):
    """(fingerprint, path) of the training file run.json records. A blend folder that records
    none (made before blends recorded it) answers for its members when they agree; (None, None):
    nothing recorded to compare."""
    data = run.config.get("data") or {}
    if data.get("fingerprint"):
        return data["fingerprint"], data.get("path")
    model = run.config.get("model") or {}
    if model.get("model") != "blend" or run.directory in seen:
        return None, None
    found = set()
    for name in model.get("runs") or []:
        try:
            member = load_run(name, run.directory.parent)
        except KitError:
            continue
        found.add(_recorded_data(member, (*seen, run.directory)))
    found.discard((None, None))
    if len({fp for fp, _ in found}) > 1:
        return "several", "several training files"
    return next(iter(found), (None, None))


def other_labels(run, spec):
    """Why run's labels are not spec's (a phrase), or None. A model's class k means the k-th label
    it was trained on: other labels, or the same in another order, are other classes."""
    labels = _recorded_labels(run)
    if labels is not None and labels != [str(label) for label in spec.labels]:
        return f"it was trained on labels {labels}, not {spec.path}'s {[str(label) for label in spec.labels]}"
    return None


def other_training_file(run, spec):
    """When run was trained on another training file than spec's: "<its file>, not <spec's>";
    else None, and None too when run.json records none or spec's training file is not here."""
    recorded, path = _recorded_data(run)
    if recorded is None:
        return None
    if not Path(spec.train).is_file():
        log(f"note: {spec.train} not found: cannot check that run {run.name} was trained on it")
        return None
    if recorded != file_fingerprint(spec.train):
        return f"{path}, not {spec.train}"
    return _other_extra_files(run, spec)


def _other_extra_files(run, spec):
    """When run learned from other [[extra]] files than spec names (or other contents): why; else None."""
    theirs = [e.get("fingerprint") for e in (run.config.get("data") or {}).get("extra") or []]
    missing = [str(e.path) for e in spec.extra if not e.path.is_file()]
    if missing:
        log(f"note: {missing[0]} not found: cannot check that run {run.name} learned from it")
        return None
    ours = [file_fingerprint(e.path) for e in spec.extra]
    if theirs == ours:
        return None
    return f"its [[extra]] files ({len(theirs)} recorded) are not the {len(ours)} of {spec.path}, or their contents changed"


def check_trained_on(run, spec, option, allow_other_data=False):
    """What `run` learned from must be what spec teaches, before its probabilities are used (to
    predict, pseudo-label, teach or blend): its labels always (no flag can make class k mean
    another label), its training file unless allow_other_data (--allow-spec-change: the same
    labels may mean other things in other data). option starts the one-line error."""
    labels = other_labels(run, spec)
    if labels:
        raise KitError(f"{option}: run {run.name}: {labels}; its class probabilities would be read as other "
                       "classes (--allow-spec-change never accepts another label set); use a run trained on "
                       "this spec's labels")
    data = None if allow_other_data else other_training_file(run, spec)
    if data:
        raise KitError(f"{option}: run {run.name} was trained on another training file ({data}); the same "
                       "labels may mean other things there: use a run of this training file")


def target_column_of(run, spec):
    """The [targets] column whose runs this run is one of, asked for as the label's (else None)."""
    if spec.target is not None:
        return None
    recorded = (run.config.get("spec") or {}).get("name")
    return next((column for column in spec.targets if spec.for_target(column).name == recorded), None)


def trained_run(spec, name=None, allow_spec_change=False, runs=RUNS):
    """The run `kit predict` uses: --run NAME, else the latest trained run of this spec. Its
    labels must be the current spec's (always); its spec fingerprint and its training file must
    match too, unless allow_spec_change."""
    run = load_run(name, runs) if name else latest_run(spec, runs)
    column = target_column_of(run, spec)
    if column is not None:
        raise KitError(f"run {run.name} predicts the {column} column ([targets.{column}]), not the label: "
                       "name a run of the label (kit predict reads a column's run from --target-run COLUMN=RUN)")
    if not run.trained:
        raise KitError(f"run {run.directory}: no trained model in {run.model_dir}; run `python -m kit train`")
    labels = other_labels(run, spec)
    if labels:
        raise KitError(f"run {run.directory}: {labels}; its class probabilities would be read as other classes, "
                       "and --allow-spec-change never accepts another label set: retrain on this spec")
    if allow_spec_change:
        return run
    recorded = run.config.get("spec", {})
    reasons = []
    if not _spec_matches(run, spec):
        changed = [k for k, v in spec.describe().items()
                   if k != "max_length" and recorded.get("resolved", {}).get(k) != v]
        reasons.append(f"on another version of the spec ({recorded.get('path')}; differs from {spec.path} in "
                       f"{', '.join(changed) or 'its fingerprint'})")
    data = other_training_file(run, spec)
    if data:
        reasons.append(f"on another training file ({data})")
    if reasons:
        raise KitError(f"run {run.directory} was trained {' and '.join(reasons)}; retrain, "
                       "or pass --allow-spec-change to predict with it anyway")
    return run
