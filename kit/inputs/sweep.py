"""Sweep files for `kit cv --sweep`: [[config]] tables of option overrides, checked like the command line."""
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from kit.core.errors import KitError
from kit.core.settings import ATTENTION, DEVICES, FROZEN_STATES, HEADS, PRECISIONS, QUANTIZE, ModelArgs, TrainArgs
from kit.inputs.spec import MAX_LENGTH_RANGE, SAFE_NAME, read_toml


def read_sweep(path):
    """A sweep file: [[config]] tables of option overrides, e.g. name = "lr3e-4", lr = 3e-4."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"sweep file not found: {path}")
    configs = read_toml(path).get("config", [])
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise KitError(f"{path}: no [[config]] tables")
    names = set()
    for number, config in enumerate(configs, 1):
        if "name" not in config:
            raise KitError(f"{path}: [[config]] number {number} has no name")
        name = config["name"]
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise KitError(f"{path}: [[config]] number {number}: name {name!r} must be letters, digits, '.', '_' "
                           "or '-' (it names a run folder)")
        if name in names:
            raise KitError(f"{path}: [[config]] number {number}: name {name!r} is used twice")
        names.add(name)
    return configs


SPEC_KEYS = ("instruction", "label_words", "max_length")
# Filled in when a run starts, from the probabilities it uses: never an option
INTERNAL_KEYS = ("pseudo_fingerprint", "teacher_fingerprint")


@dataclass(frozen=True)
class Allowed:
    """What a sweep key may hold: its command-line option's type and range (kit/commands/options.py;
    tests/test_trust_inputs.py checks that the two agree)."""
    kind: type                 # bool, int, float, str, list or dict
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()        # str: one of these; int or bool: these words as well ("auto")


OPTIONS = {
    "head": Allowed(str, choices=HEADS),
    "precision": Allowed(str, choices=PRECISIONS),
    "attention": Allowed(str, choices=ATTENTION),
    "device": Allowed(str, choices=DEVICES),
    "quantize": Allowed(str, choices=QUANTIZE),
    "frozen_states": Allowed(str, choices=FROZEN_STATES),
    "lora_r": Allowed(int, 0),
    "lora_alpha": Allowed(int, 1),
    "lora_dropout": Allowed(float, 0, 1, high_open=True),
    "lora_layers": Allowed(int, 0, choices=("auto",)),
    "lora_targets": Allowed(list),
    "gradient_checkpointing": Allowed(bool, choices=("auto",)),
    "predict_batch_size": Allowed(int, 1),
    "frozen_cache_gb": Allowed(float, 0),
    "lr": Allowed(float, 0, low_open=True),
    "epochs": Allowed(float, 0, low_open=True),
    "max_steps": Allowed(int, 0),
    "batch_size": Allowed(int, 1),
    "grad_accum": Allowed(int, 1),
    "warmup": Allowed(float, 0, 1),
    "weight_decay": Allowed(float, 0),
    "checkpoint_every": Allowed(int, 0),
    "pseudo_threshold": Allowed(float, 0.5, 1),
    "kl_weight": Allowed(float, 0, 1),
    "temperature": Allowed(float, 0, low_open=True),
    "max_length": Allowed(int, *MAX_LENGTH_RANGE),
    "instruction": Allowed(str),
    "label_words": Allowed(dict),
}
KINDS = {bool: bool, int: int, float: float, str: str, list: list, "bool": bool, "int": int, "float": float,
         "str": str, "list": list}


def allowed(key):
    """What a sweep key may hold, or None for an unknown key. A settings field without an entry in
    OPTIONS (seed, model, pseudo, ...) is checked by its type."""
    if key in OPTIONS:
        return OPTIONS[key]
    types = {f.name: f.type for f in fields(ModelArgs) + fields(TrainArgs) if f.name not in INTERNAL_KEYS}
    return Allowed(KINDS.get(types[key], object)) if key in types else None


def _describe(rule):
    noun = {bool: "true or false", int: "an integer", float: "a finite number", str: "a non-empty string",
            list: "a list of module names (or one comma-separated string)", dict: "a table"}[rule.kind]
    if rule.low is not None and rule.high is not None:
        noun += (f" with {rule.low} {'<' if rule.low_open else '<='} x "
                 f"{'<' if rule.high_open else '<='} {rule.high}")
    elif rule.low is not None:
        noun += f" with x {'>' if rule.low_open else '>='} {rule.low}"
    return " or ".join([noun, *map(repr, rule.choices)])


def _in_range(value, rule):
    if not math.isfinite(value):
        return False
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        return False
    return rule.high is None or (value < rule.high if rule.high_open else value <= rule.high)


def check_value(key, value, where):
    """A sweep entry's value as the command line would take it (epochs = 2 becomes 2.0, a comma
    string of lora_targets a list); KitError naming the entry and the key otherwise."""
    rule = allowed(key)
    if rule.kind is str and rule.choices:
        if value not in rule.choices:
            raise KitError(f"{where}: {key} = {value!r}: choose one of {', '.join(rule.choices)}")
        return value
    if isinstance(value, str) and value in rule.choices:
        return value
    kind, ok = rule.kind, False
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind in (int, float):
        ok = (isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
              and _in_range(value, rule))
        value = float(value) if ok and kind is float else value   # epochs = 2 fingerprints as 2.0 does
    elif kind is str:
        ok = isinstance(value, str) and bool(value.strip())
    elif kind is list:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            ok = bool([item.strip() for item in items if item.strip()])
            value = [item.strip() for item in items if item.strip()] if ok else value
    elif kind is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise KitError(f"{where}: {key} = {value!r}: must be {_describe(rule)}")
    return value


def split_overrides(overrides, spec, base_model, base_train, where):
    """Apply a sweep entry's keys to copies of the spec (prompt keys), model and training args."""
    model_keys = {f.name for f in fields(ModelArgs)}
    train_keys = {f.name for f in fields(TrainArgs)} - set(INTERNAL_KEYS)
    changes = {"spec": {}, "model": {}, "train": {}}
    for key, value in overrides.items():
        if key == "name":
            continue
        if allowed(key) is None:
            raise KitError(f"{where}: unknown option {key!r}; known: {sorted(model_keys | train_keys | set(SPEC_KEYS))}")
        value = check_value(key, value, where)
        if key in SPEC_KEYS:
            changes["spec"][key] = value
        elif key in model_keys:
            changes["model"][key] = value
        else:
            changes["train"][key] = value
    words = changes["spec"].get("label_words")
    if words is not None:
        if set(map(str, words)) != set(spec.labels):
            raise KitError(f"{where}: label_words must map every label {spec.labels}")
        for label, word in words.items():
            if not isinstance(word, str) or not word.strip():
                raise KitError(f"{where}: label_words {label} = {word!r}: must be a non-empty string")
        if len(set(words.values())) != len(words):
            raise KitError(f"{where}: label_words: two labels answer the same word in {words}")
        changes["spec"]["label_words"] = {str(k): str(v) for k, v in words.items()}
    return (replace(spec, **changes["spec"]), replace(base_model, **changes["model"]),
            replace(base_train, **changes["train"]))
