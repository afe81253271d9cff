"""`kit auto`: the roads that fit a time budget, cross-validated on the same folds, each scored
out of fold as a whole procedure, and the one to upload.

Roads, cheapest first (TF-IDF always; the others are worth about the same over it on the real
data here, README "Winning recipes", so the cheaper one per expected point comes first):
  tfidf     1-2 gram TF-IDF + logistic regression: seconds, the floor every road must beat
  minilm    all-MiniLM-L6-v2 fine-tuned whole, with a recipe chosen from the texts' length
  llm       the default LLM road (SmolLM2 + LoRA on a CPU)
  --model   each model given (the larger model of a GPU), the default LLM recipe
A road's time is estimated before it starts: token-epochs (training rows x epochs x tokens per
row, over every fold) times a rate in seconds per token-epoch. The rates start from what was
measured on the 2-core CPU of this project and are replaced by what each finished road measured
on this machine (runs/auto-rates.json). A road that does not fit the budget left is listed with
its estimate, never silently dropped. Every road is an ordinary `kit cv --keep-models` run under
its fingerprint, so an interrupted `kit auto` resumes and a finished road costs nothing again.

Honest scores: every road's figure is the nested one (kit/evaluation/blending.py::nested_blend):
a binary label metric's threshold, and a blend's weights, fitted on the other folds' OOF rows
only, then applied to the fold. The OOF figure fitted on its own rows is printed beside it, and
never decides.
"""
import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from kit.core.budget import minutes, parse_duration
from kit.core.errors import KitError
from kit.core.files import write_json, write_text
from kit.core.hashing import fingerprint
from kit.core.logs import log
from kit.core.settings import EMBEDDED_ENCODER, TFIDF, ModelArgs, TrainArgs
from kit.engine.device import cuda_info
from kit.evaluation.blending import nested_blend
from kit.evaluation.metrics import metric_info
from kit.models.embedded import embedded_encoder_dir
from kit.models.registry import make_model
from kit.runs.folder import RUNS, default_name, effective_config, load_run
from kit.tasks.columns import label_column
from kit.workflows.blend import blend, run_oof
from kit.workflows.cv import cross_validate
from kit.workflows.predict import SUBMISSION, predict_split

RATES_FILE = "auto-rates.json"
# seconds per token-epoch on the project's 2-core CPU, training and the held-out fold's prediction
# together, all from this project's CVs (5 folds): TF-IDF 24 s for 4,890 tweets and 102 s for 1,600
# abstracts of 281 tokens (its inner search for C included); MiniLM 231 s a fold for 3,912 tweets of
# 36 tokens, 2 epochs (alone); the default LLM 36.8 min for 1,600 abstracts at 160 tokens, the state
# cache cold (its prompt adds PROMPT_TOKENS per row). Machines differ: runs/auto-rates.json keeps what
# each finished road measured with that runs folder, and that decides the next estimate.
CPU_RATES = {"tfidf": 5e-5, "minilm": 8.2e-4, "llm": 1.1e-3}
GPU_SPEEDUP = 40           # a guess for a first GPU run (no GPU was lent here); measured rates replace it
PROMPT_TOKENS = 35         # the instruction and chat template around each row of the LLM road
SMOLLM2_PARAMETERS = 135e6
SHORT_TEXTS = 128          # tokens at the 90th percentile: above it, the long-text recipe


def parse_budget(text):
    """kit auto's --budget as seconds."""
    return parse_duration(text, "--budget")


@dataclass
class Road:
    key: str                 # the rate it is estimated by: tfidf, minilm or llm
    title: str
    recipe: str              # in words, for the table
    model_args: ModelArgs
    train_args: TrainArgs
    max_length: int
    scale: float = 1.0       # an LLM's parameters over SmolLM2's (its time scales with them)


def token_lengths(spec, texts):
    """Tokens per row of the rendered inputs, by the embedded MiniLM tokenizer (offline, a second or
    two for thousands of rows; the other roads' tokenizers give counts of the same size)."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_encoder_dir())
    tokenizer.model_max_length = 10 ** 9           # counting, not encoding: no truncation warning
    return np.array([len(ids) for ids in tokenizer(list(texts)).input_ids])


def minilm_recipe(lengths):
    """(max_length, epochs) from the texts' length: tweets (90 % within 128 tokens) take 128 tokens
    and 2 epochs; longer texts take 256 tokens and 3 epochs (the medical sweep's recipe, 0.616
    macro-F1 on unseen abstracts against 0.39 with the tweets' recipe)."""
    if np.percentile(lengths, 90) <= SHORT_TEXTS:
        return SHORT_TEXTS, 2.0
    return 256, 3.0


def parameters_of(model):
    """An LLM directory's parameter count from its config.json (12 h^2 per block plus the
    embeddings), or None when it has no readable config."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 12 * layers * hidden ** 2 + config.get("vocab_size", 0) * hidden


def candidate_roads(spec, lengths, models):
    """The roads to try: TF-IDF, MiniLM with the length recipe, the default LLM, then each model given."""
    max_length, epochs = minilm_recipe(lengths)
    roads = [Road("tfidf", "TF-IDF + logistic regression", "1-2 grams", ModelArgs(model=TFIDF), TrainArgs(),
                  spec.max_length),
             Road("minilm", "all-MiniLM-L6-v2 fine-tuned whole",
                  f"{max_length} tokens, {epochs:g} epochs, lr 5e-5, batch 32 (from the texts' length)",
                  ModelArgs(model=EMBEDDED_ENCODER, lora_r=0), TrainArgs(lr=5e-5, epochs=epochs, batch_size=32),
                  max_length),
             Road("llm", "SmolLM2-135M + LoRA (the default road)", f"{spec.max_length} tokens, the kit's defaults",
                  ModelArgs(), TrainArgs(), spec.max_length)]
    for model in models:
        parameters = parameters_of(model)
        roads.append(Road("llm", Path(model).name, f"{spec.max_length} tokens, the kit's defaults",
                          ModelArgs(model=model), TrainArgs(), spec.max_length,
                          scale=(parameters or SMOLLM2_PARAMETERS) / SMOLLM2_PARAMETERS))
    return roads


def token_epochs(road, lengths, folds, holdout):
    """Training rows x epochs x tokens per row, summed over the folds' fits (TF-IDF: one pass over
    every token, none cut)."""
    fits_rows = len(lengths) * (1 - holdout) if holdout else len(lengths) * (folds - 1)
    if road.key == "tfidf":
        return fits_rows * lengths.mean()
    per_row = np.minimum(lengths + (PROMPT_TOKENS if road.key == "llm" else 0), road.max_length).mean()
    return fits_rows * road.train_args.epochs * per_row * road.scale


class Rates:
    """Seconds per token-epoch by road, on a CPU or a GPU: what a finished road measured with this
    runs folder (another machine with another runs folder measures its own), else the project's CPU
    figures (divided by GPU_SPEEDUP on a GPU)."""

    def __init__(self, runs):
        self.path = Path(runs) / RATES_FILE
        self.device = "cuda" if cuda_info() is not None else "cpu"
        try:
            self.measured = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except ValueError:
            self.measured = {}          # a damaged file is re-measured, never trusted

    def of(self, key):
        measured = self.measured.get(self.device, {}).get(key)
        if measured:
            return measured, "measured here"
        return CPU_RATES[key] / (GPU_SPEEDUP if self.device == "cuda" else 1), "prior"

    def record(self, key, seconds, units):
        if units > 0 and seconds > 0:
            self.measured.setdefault(self.device, {})[key] = seconds / units
            write_json(self.path, self.measured)


def _finished(spec, road, folds, holdout, seed, runs, trust_remote_code):
    """The road's cv_scores.json when this very configuration was cross-validated on these folds
    (its key is made from the settings resolved on this device, as `kit cv` makes it)."""
    task = label_column(spec).estimator_task()
    resolved = make_model(task, road.model_args, road.train_args, trust_remote_code).resolve_args()
    key = effective_config(spec, resolved, road.train_args)["key"]
    path = Path(runs) / default_name(spec, resolved, key) / "cv_scores.json"
    try:
        scores = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    config = scores.get("config", {})
    same = (config.get("folds"), config.get("holdout"), config.get("fold_seed"), config.get("mode")) == \
        (folds, holdout, seed, "score")
    kept = bool(load_run(path.parent.name, runs).fold_models)     # what --write and the printed commands use
    return scores if scores.get("run_key") == key and same and kept else None


def estimate(road, lengths, folds, holdout, rates):
    """(seconds, how the rate was found)."""
    rate, how = rates.of(road.key)
    return token_epochs(road, lengths, folds, holdout) * rate, how


def run_roads(spec, budget, folds=5, holdout=None, seed=0, models=(), runs=RUNS, trust_remote_code=False):
    """Cross-validate the roads that fit the budget (seconds), in order; returns (results, skipped)."""
    column = label_column(spec)
    rows = column.rows("train")[0]
    lengths = token_lengths(spec, rows.texts)
    rates, started, results, skipped = Rates(runs), time.time(), [], []
    planned = []
    for road in candidate_roads(spec, lengths, models):
        road_spec = replace(spec, max_length=road.max_length)
        done = _finished(road_spec, road, folds, holdout, seed, runs, trust_remote_code)
        planned.append((road, road_spec, done, *((0.0, "finished before") if done else
                                                 estimate(road, lengths, folds, holdout, rates))))
    # the same expected gain over TF-IDF per road (README "Winning recipes"): the cheapest first
    for road, road_spec, done, seconds, how in sorted(planned, key=lambda p: (p[0].key != "tfidf", p[3])):
        left = budget - (time.time() - started)
        if seconds > left and road.key != "tfidf":      # TF-IDF always runs: seconds, and the floor
            skipped.append({"road": road.title, "estimate": seconds, "left": max(left, 0.0), "rate": how})
            log(f"auto: {road.title} does not fit: about {minutes(seconds)} ({how}), {minutes(left)} left")
            continue
        log(f"auto: {road.title} ({road.recipe}): about {minutes(seconds)} ({how}), {minutes(left)} left")
        scores = done or cross_validate(road_spec, road.model_args, road.train_args, folds, holdout, seed,
                                        runs=Path(runs), keep_models=True, trust_remote_code=trust_remote_code)
        spent = scores.get("train_seconds", 0) + scores.get("predict_seconds", 0)
        if not done:
            rates.record(road.key, spent, token_epochs(road, lengths, folds, holdout))
        results.append({"road": road.title, "recipe": road.recipe, "run": scores["config"]["name"],
                        "seconds": spent, "estimate": seconds, "rate": how, "scores": scores})
    return results, skipped


def honest_scores(spec, results, runs=RUNS):
    """Each road's nested score (threshold fitted without the fold), and the blend of the roads (weights
    and threshold fitted without the fold) when two or more finished and there are folds to nest in."""
    metric, scale = spec.metric, spec.scale
    for result in results:
        truth, fold, outputs = run_oof(spec, result["run"], runs)
        nested = nested_blend(metric, truth, [outputs], fold, scale)
        result["honest"] = nested["score"] if nested else result["scores"][metric]
        result["fitted"] = result["scores"].get("tuned_score", result["scores"][metric])
    if len(results) < 2:
        return None
    members = [r["run"] for r in results]
    summary = blend(spec, members, name=blend_name(spec, members), runs_dir=Path(runs))
    if summary["nested"] is None:            # a holdout: the weights would be fitted on the rows that score them
        return {"summary": summary, "honest": None}
    weights = ", ".join(f"{w:.2f}" for w in summary["weights"])
    return {"road": f"blend of the {len(results)} roads (weights {weights})", "recipe": summary["how"],
            "run": Path(summary["directory"]).name, "honest": summary["nested"]["score"],
            "fitted": summary["blend"]["score"], "seconds": 0.0, "summary": summary}


def blend_name(spec, members):
    """The blend's folder: one per set of member runs, in order (another budget that finishes other
    roads makes another blend, never a clash with this one's folder)."""
    return f"{spec.name}-auto-blend-{fingerprint(members)[:6]}"


def choose(spec, results, blended):
    """(the candidate to upload, the noise it was chosen within): the simplest candidate whose honest
    score is within one standard error of the best one (the one-standard-error rule; simplest: TF-IDF,
    then the roads in the order they ran, cheapest first, then the blend). The standard error is the
    best single road's spread over folds / sqrt(folds): a difference smaller than that is one the
    folds cannot tell from noise, and the simpler candidate then generalises at least as well (on
    the medical outer rows a blend 0.015 ahead in CV lost 0.024 outside)."""
    candidates = [*results, *([blended] if blended and blended.get("honest") is not None else [])]
    sign = 1 if metric_info(spec.metric).higher_is_better else -1
    scored = [c for c in candidates if c["honest"] is not None and not math.isnan(c["honest"])]
    if not scored:
        return None, 0.0
    best = max(scored, key=lambda c: sign * c["honest"])
    singles = [c for c in scored if "scores" in c]
    top = max(singles, key=lambda c: sign * c["honest"]) if singles else best
    per_fold = top.get("scores", {}).get("per_fold") or [0.0]
    noise = float(np.std(per_fold) / math.sqrt(len(per_fold)))
    return next(c for c in scored if sign * (best["honest"] - c["honest"]) <= noise), noise


def upload_commands(spec, best, split, runs=RUNS):
    """The commands that write the chosen submission (a blend: each member's fold ensemble predicts first)."""
    threshold = " --threshold oof" if label_column(spec).thresholded else ""
    where = f" --spec {spec.path}" + ("" if Path(runs) == RUNS else f" --runs-dir {runs}")
    members = [m["run"] for m in best["summary"]["runs"]] if best.get("summary") else [best["run"]]
    if len(members) == 1:
        return [f"kit predict{where} --run {members[0]} --models folds --split {split}{threshold}"]
    return [*(f"kit predict{where} --run {m} --models folds --split {split} --out {m}.csv" for m in members),
            f"kit blend{where} {' '.join(members)} --split {split}"]


def write_choice(spec, best, split, out=SUBMISSION, runs=RUNS):
    """Write the chosen road's submission for split (a blend: each member predicts first)."""
    threshold = "oof" if label_column(spec).thresholded else None
    if not best.get("summary"):
        return predict_split(spec, split, best["run"], threshold=threshold, out=out, runs=Path(runs), models="folds")
    with tempfile.TemporaryDirectory() as scratch:    # the members' own submissions are not kept
        for member in best["summary"]["runs"]:
            predict_split(spec, split, member["run"], threshold=threshold, out=Path(scratch) / "member.csv",
                          runs=Path(runs), models="folds")
    return blend(spec, [m["run"] for m in best["summary"]["runs"]], split, out, name=best["run"],
                 runs_dir=Path(runs))


def _estimated(result):
    if result["rate"] == "finished before":
        return "finished before, reused"
    return f"estimated {minutes(result['estimate'])}, {result['rate']}"



def format_auto(spec, folds, holdout, budget, results, blended, skipped, best, noise=0.0, split="test", runs=RUNS):
    """The table, what did not fit, and what to upload."""
    metric = spec.metric
    how = f"--holdout {holdout}" if holdout else f"{folds} folds"
    lines = [f"kit auto: {spec.name}, {metric} ({how}, the same folds for every road), budget {minutes(budget)}", "",
             f"| road | recipe | honest {metric} | {metric} fitted on its own OOF rows | fold spread | time | run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        spread = r["scores"].get("fold_std")
        lines.append(f"| {r['road']} | {r['recipe']} | **{r['honest']:.4f}** | {r['fitted']:.4f} | "
                     f"{'-' if spread is None else f'± {spread:.4f}'} | {minutes(r['seconds'])} "
                     f"({_estimated(r)}) | {r['run']} |")
    if blended and blended.get("honest") is not None:
        lines.append(f"| {blended['road']} | {blended['recipe']}, fitted without each fold | "
                     f"**{blended['honest']:.4f}** | {blended['fitted']:.4f} | - | seconds | {blended['run']} |")
    lines.append("")
    if holdout:
        lines.append("honest: the held-out rows at a threshold of 0.5, nothing fitted on them (the fitted column "
                     "tunes the threshold on those rows, and flatters)")
    else:
        lines.append(f"honest: each fold's threshold{' and blend weights' if blended else ''} fitted on the other "
                     "folds only, so the figure is out of fold for the whole procedure (the fitted column flatters)")
    if metric_info(metric).cut_points:
        lines.append("qwk: the honest figure rounds at the half-way points; the upload rounds at cut points tuned "
                     "on the OOF rows, whose own figure is the fitted column")
    if blended and blended.get("honest") is None:
        lines.append("blend: not recommended under --holdout (its weights would be fitted on the rows that score "
                     "them); use --folds for a nested blend score")
    for s in skipped:
        lines.append(f"did not fit: {s['road']} (about {minutes(s['estimate'])} by the {s['rate']} rate, "
                     f"{minutes(s['left'])} of the budget left)")
    if best is None:
        lines.append("no road finished: raise --budget")
    else:
        top = max((c for c in [*results, blended] if c and c.get("honest") is not None),
                  key=lambda c: c["honest"] * (1 if metric_info(metric).higher_is_better else -1))
        if top is not best:
            lines.append(f"{top['road']} scores {top['honest']:.4f}, within one standard error ({noise:.4f}: the "
                         "best road's spread over folds / sqrt(folds)) of the simpler road below: the simpler is kept")
        lines.append(f"upload: {best['road']} (honest {metric} {best['honest']:.4f}); written by "
                     f"`kit auto --write {split}`, or by")
        lines += [f"  {command}" for command in upload_commands(spec, best, split, runs)]
    return "\n".join(lines)


def auto(spec, budget, folds=5, holdout=None, seed=0, models=(), runs=RUNS, trust_remote_code=False):
    """`kit auto`: run the roads, score them honestly; returns (the table, the chosen candidate or None)."""
    if not spec.has_labels:
        raise KitError(f"{spec.path} has no [columns] label: kit auto chooses a road for the label")
    results, skipped = run_roads(spec, budget, folds, holdout, seed, models, runs, trust_remote_code)
    blended = honest_scores(spec, results, runs)
    best, noise = choose(spec, results, blended)
    table = format_auto(spec, folds, holdout, budget, results, blended, skipped, best, noise, runs=runs)
    write_text(Path(runs) / f"{spec.name}-auto.md", table + "\n")
    write_json(Path(runs) / f"{spec.name}-auto.json",
               {"results": [{k: v for k, v in r.items() if k != "scores"} for r in results],
                "blend": None if blended is None else {k: v for k, v in blended.items() if k != "summary"},
                "skipped": skipped, "best": None if best is None else best["run"]})
    return table, best
