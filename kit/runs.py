"""Run folders: the unit of trust. One module owns their names, their recorded configuration,
the fingerprints of everything reused inside them, and where each file lives.

A run is created with its effective configuration (`run.json`): the spec as resolved, every
model and training argument, the base model's identity, a fingerprint of the training data,
library versions and the device. The folder's name ends with a key over everything that
decides what the model learns, so two specs or two settings can never share (and overwrite)
a folder, and `kit train` and `kit cv` with the same settings meet in the same folder.
"""
import hashlib
import json
import platform
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import dist
from .data import write_json, write_text
from .errors import KitError
from .logs import log
from .models import RUNTIME_ARGS_MODEL, base_identity

RUNS = Path("runs")
CONFIG = "run.json"
NOT_KEYED_TRAIN = ("checkpoint_every", "frozen_cache_gb", "state_cache")   # how often to save / how fast, never what is learned


def fingerprint(*parts):
    """16 hex characters of sha256 over a JSON rendering of parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def library_versions():
    import importlib.metadata as meta
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
    key = fingerprint(spec.fingerprint(), model, train, base["fingerprint"], data["fingerprint"])
    return {"key": key, "spec": {"path": str(Path(spec.path).resolve()), "name": spec.name,
                                 "fingerprint": spec.fingerprint(), "resolved": spec.describe()},
            "model": asdict(model_args), "train": asdict(train_args), "base_model": base, "data": data,
            "versions": library_versions(), "device": device_name(), "world_size": dist.world_size(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def default_name(spec, model_args, key):
    model = Path(model_args.model).name or "model"
    head = "" if model_args.model == "tfidf" else f"-{model_args.head}"
    return f"{spec.name}-{model}{head}-{key[:6]}"


class Run:
    """A run folder and what lives where in it."""

    def __init__(self, directory, config):
        self.directory, self.config = Path(directory), config
        self.key, self.name = config["key"], Path(directory).name

    model_dir = property(lambda self: self.directory / "model")
    checkpoint = property(lambda self: self.directory / "checkpoint.pt")
    train_metrics = property(lambda self: self.directory / "train_metrics.json")
    cv_dir = property(lambda self: self.directory / "cv")
    cv_scores = property(lambda self: self.directory / "cv_scores.json")
    oof = property(lambda self: self.directory / "oof.csv")

    def fold_result(self, number):
        return self.cv_dir / f"fold-{number}.json"

    def fold_checkpoint(self, number):
        return self.cv_dir / f"fold-{number}.ckpt"

    def fold_model(self, number):
        return self.cv_dir / f"fold-{number}-model"

    @property
    def fold_models(self):
        """The fold models `kit cv --keep-models` kept, in fold order."""
        found = [p for p in self.cv_dir.glob("fold-*-model") if (p / "kit_model.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    @property
    def merged_folds(self):
        return self.cv_dir / "merged-model"

    def predictions(self, split):
        return self.directory / f"predictions-{split}.csv"

    def predict_stats(self, split):
        return self.directory / f"predict-{split}.json"

    def predict_progress(self, split, mode):
        return self.directory / f".predict-{split}-{mode}.progress.json"

    @property
    def trained(self):
        return (self.model_dir / "kit_model.json").is_file() or bool(self.fold_models)

    def clear_predict_progress(self):
        """A new model makes every half-finished prediction of the old one worthless."""
        for path in self.directory.glob(".predict-*.progress.json"):
            path.unlink()


def _write_config(directory, config, spec):
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG, config)
    write_text(directory / "spec.toml", Path(spec.path).read_text(encoding="utf-8"))


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
    --overwrite."""
    config = effective_config(spec, model_args, train_args)
    directory = Path(runs) / (name or default_name(spec, model_args, config["key"]))
    existing = directory / CONFIG
    # every rank checks (so every rank raises the same error); rank 0 alone writes
    if existing.exists():
        old = read_config(directory)
        if old.get("key") == config["key"] and not overwrite:
            dist.barrier()
            return Run(directory, old)
        if not overwrite:
            raise KitError(f"run {directory} was made with other settings ({_differences(old, config)}); "
                           "pass another --name, or --overwrite to replace it")
        replace = True
    else:
        replace = directory.exists() and any(directory.iterdir())
        if replace and not overwrite:
            raise KitError(f"{directory} exists and is not a kit run folder; pass another --name")
    dist.barrier()
    if dist.is_main():
        if replace:
            log(f"run {directory}: replacing it (--overwrite)")
            shutil.rmtree(directory)
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
    """The most recently trained run of this spec file (never a run of another competition)."""
    if not spec.has_labels and spec.target is None:
        raise KitError(f"{spec.path} has no [columns] label, so no label model; its [targets] columns' runs are "
                       f"named {spec.name}.<column>-... (python -m kit train --target COLUMN)")
    mine = Path(spec.path).resolve()
    candidates = []
    for config_file in Path(runs).glob(f"*/{CONFIG}"):
        try:
            run = Run(config_file.parent, json.loads(config_file.read_text()))
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            continue
        recorded = run.config.get("spec", {})
        # the same spec file, and the same task in it: the label's runs and each [targets]
        # column's runs (named <spec>.<column>) are never taken for one another
        if recorded.get("path") == str(mine) and recorded.get("name") == spec.name and run.trained:
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


def trained_run(spec, name=None, allow_spec_change=False, runs=RUNS):
    """The run `kit predict` uses: --run NAME, else the latest trained run of this spec; its
    spec fingerprint must match the current spec's."""
    run = load_run(name, runs) if name else latest_run(spec, runs)
    if not run.trained:
        raise KitError(f"run {run.directory}: no trained model in {run.model_dir}; run `python -m kit train`")
    recorded = run.config.get("spec", {})
    if not _spec_matches(run, spec) and not allow_spec_change:
        changed = [k for k, v in spec.describe().items()
                   if k != "max_length" and recorded.get("resolved", {}).get(k) != v]
        raise KitError(f"run {run.directory} was trained on another version of the spec ({recorded.get('path')}; "
                       f"differs from {spec.path} in {', '.join(changed) or 'its fingerprint'}); retrain, "
                       "or pass --allow-spec-change to predict with it anyway")
    return run
