"""What the verbs share: options, the spec option, and one-line errors with exit code 2."""
import functools
import math
import sys
from dataclasses import fields

import click

from kit.core import dist
from kit.core.errors import KitError
from kit.core.settings import (
    ATTENTION,
    DEVICES,
    EMBEDDED_ENCODER,
    EMBEDDED_LLM,
    FROZEN_STATES,
    HEADS,
    PRECISIONS,
    QUANTIZE,
    TFIDF,
    ModelArgs,
    TrainArgs,
)
from kit.inputs.spec import load_spec
from kit.runs.folder import RUNS

DEFAULTS_M = ModelArgs()


DEFAULTS_T = TrainArgs()


# --target's road when --model is not given: TF-IDF phrases, in seconds. On the real papers
# (README "Predicted columns") SmolLM2 with LoRA on its top 8 blocks scored a higher exact keyword
# F1 (0.174 against 0.159) but took 31 minutes to train on a 2-core CPU: a choice to make, not a default
DEFAULT_ROAD = TFIDF


class AutoInt(click.ParamType):
    """A non-negative integer or the word auto."""
    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or 'auto'", param, ctx)
        if number < 0:
            self.fail(f"{number} is negative", param, ctx)
        return number


AUTO_INT = AutoInt()


class FirstNameOnly(click.Option):
    """An option whose later names are hidden aliases: `--help` shows the first only (the old
    `--temperature` still works, but every LLM tool means sampling by that name)."""

    def get_help_record(self, ctx):
        names, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = names

    def get_error_hint(self, ctx):
        return f"'{self.opts[0]}'"


class FiniteFloat(click.FloatRange):
    """click.FloatRange that refuses nan and inf: nan passes every comparison of a range check
    (and json.dumps writes it into run.json as NaN, which is not JSON)."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


TRUST_REMOTE_CODE = click.option(
    "--trust-remote-code", is_flag=True,
    help="Let the base model's own Python code run (ChatGLM2/3). Taken from this command line only, "
         "never from a run folder or a sweep file.")


# --run NAME on every verb that takes runs; the verbs that take several also take them as arguments
RUN_NAMES = click.option("--run", "run_options", multiple=True, metavar="NAME",
                         help="A run folder name or path (repeatable; the same as naming it as an argument).")


# one spelling on every verb that reads or writes run folders
RUNS_DIR = click.option("--runs-dir", default=str(RUNS), show_default=True, type=click.Path(file_okay=False),
                        help="The folder holding the run folders.")


TARGET = click.option(
    "--target", default=None, metavar="COLUMN",
    help="Work on a predicted submission column of the spec's [targets] (e.g. Keywords) instead of the label. "
         "Its roads are --model tfidf (top TF-IDF phrases; the default with --target: seconds), minilm "
         "(MiniLM similarity + MMR diversity) or an LLM (smollm2, a path, a hub id: LoRA writes the keyword list; "
         "best exact F1 with --lora-layers 8, measured).")


def spec_option(command):
    return click.option("--spec", "spec_path", default="data/competition.toml", show_default=True,
                        type=click.Path(dir_okay=False), help="The competition spec (TOML).")(command)


def model_options(command, multiple_models=False):
    """Model and training options, shared by `train` and `cv` so both run the same recipe."""
    options = [
        click.option("--model", multiple=multiple_models, default=None if multiple_models else DEFAULTS_M.model,
                     show_default=not multiple_models,
                     help=f"'{EMBEDDED_LLM}' (embedded SmolLM2-135M-Instruct), '{EMBEDDED_ENCODER}' "
                          f"(embedded all-MiniLM-L6-v2), '{TFIDF}' (TF-IDF + logistic regression), a local "
                          "model directory, or a hub id." + (" Repeat to compare." if multiple_models else "")),
        click.option("--head", type=click.Choice(HEADS), default=DEFAULTS_M.head, show_default=True,
                     help="classify: a classification head on the last token; generate: answer the label word."),
        click.option("--lora-r", type=click.IntRange(min=0), default=DEFAULTS_M.lora_r, show_default=True,
                     help="LoRA rank; 0 fine-tunes every weight."),
        click.option("--lora-alpha", type=click.IntRange(min=1), default=DEFAULTS_M.lora_alpha, show_default=True),
        click.option("--lora-dropout", type=FiniteFloat(0, 1, max_open=True), default=DEFAULTS_M.lora_dropout,
                     show_default=True),
        click.option("--lora-targets", default=None,
                     help="Comma-separated module names (default: peft's all-linear, every linear layer in the "
                          "blocks)."),
        click.option("--lora-layers", type=AUTO_INT, default=DEFAULTS_M.lora_layers, show_default=True,
                     help="LoRA on the top N blocks only (0: all); the lower blocks are then computed once. "
                          "auto: 4 on a CPU (measured best there), all blocks on a GPU."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS_M.precision, show_default=True,
                     help="auto: bf16 on GPUs that have it, fp16 autocast + gradient scaler on others (T4, V100), "
                          "fp32 on a CPU."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
                     help="Recompute activations in the backward pass [default: on for models over 1B "
                          "parameters on a GPU]."),
        click.option("--device", type=click.Choice(DEVICES), default=DEFAULTS_M.device, show_default=True,
                     help="auto: a GPU when torch sees one, else the CPU; cpu runs on the CPU even where there is a GPU."),
        click.option("--attention", type=click.Choice(ATTENTION), default=DEFAULTS_M.attention, show_default=True,
                     help="auto: flash_attention_2 when installed on a GPU, else PyTorch SDPA."),
        click.option("--quantize", type=click.Choice(QUANTIZE), default=None,
                     help="QLoRA: load the base in 4-bit NF4 (double quantisation) or 8-bit through bitsandbytes."),
        click.option("--frozen-states", type=click.Choice(FROZEN_STATES), default=DEFAULTS_M.frozen_states,
                     show_default=True,
                     help="With --lora-layers N: how the frozen lower blocks' states are computed and kept. fp16: an "
                          "fp32 pass kept in half precision; fp32: kept exactly; int8: int8 dynamic-quantised lower "
                          "blocks (CPU; faster, measured in `kit bench`)."),
        click.option("--state-cache/--no-state-cache", default=DEFAULTS_T.state_cache, show_default=True,
                     help="Keep the frozen lower blocks' states on disk (runs/.state-cache), computed once for every "
                          "CV fold, later `kit train`, sweep entry and prediction from the same base model and "
                          "prompt. `kit cache --clear` empties it."),
        click.option("--frozen-cache-gb", type=FiniteFloat(min=0), default=DEFAULTS_T.frozen_cache_gb,
                     show_default=True,
                     help="Budget for those states: the disk cache's (0: 20 GB, or half the free disk when less; "
                          "least recently used states are dropped beyond it), or with --no-state-cache this fit's RAM "
                          "(0: half the free RAM). A fit whose states exceed it runs through every block."),
        TRUST_REMOTE_CODE,
        click.option("--max-length", type=click.IntRange(16, 131072), default=None,
                     help="Tokens per prompt (default: the spec's [task] max_length); the input is cut, "
                          "never the instruction or the answer."),
        click.option("--lr", type=FiniteFloat(0, min_open=True), default=DEFAULTS_T.lr, show_default=True),
        click.option("--epochs", type=FiniteFloat(0, min_open=True), default=DEFAULTS_T.epochs,
                     show_default=True),
        click.option("--max-steps", type=click.IntRange(min=0), default=DEFAULTS_T.max_steps, show_default=True,
                     help="Stop after this many optimizer steps (0: use --epochs)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS_T.batch_size, show_default=True),
        click.option("--grad-accum", type=click.IntRange(min=1), default=DEFAULTS_T.grad_accum, show_default=True),
        click.option("--warmup", type=FiniteFloat(0, 1), default=DEFAULTS_T.warmup, show_default=True,
                     help="Linear warm-up from 0 over this fraction of the steps; then linear decay to 0."),
        click.option("--weight-decay", type=FiniteFloat(min=0), default=DEFAULTS_T.weight_decay,
                     show_default=True),
        click.option("--seed", type=int, default=DEFAULTS_T.seed, show_default=True,
                     help="Training seed (initial weights, batch order, dropout)."),
        click.option("--checkpoint-every", type=click.IntRange(min=0), default=DEFAULTS_T.checkpoint_every,
                     show_default=True, help="Save a resumable checkpoint every N steps (0: never)."),
        click.option("--class-weights", is_flag=True, help="Weight the classify loss by inverse class frequency."),
        click.option("--pseudo", default=None, metavar="RUN[:SPLIT]",
                     help="Pseudo-labels: add SPLIT's rows (default test) whose top probability in RUN's "
                          "predictions-SPLIT.csv reaches --pseudo-threshold, labelled with its argmax. Under "
                          "`kit cv`, RUN must be a `kit cv --keep-models` run on the same folds (or a `kit blend` of "
                          "such runs): fold k uses its fold-k model(s) only."),
        click.option("--pseudo-threshold", type=FiniteFloat(0.5, 1), default=DEFAULTS_T.pseudo_threshold,
                     show_default=True, help="The top probability a split row needs to become a pseudo-label."),
        click.option("--pseudo-soft", is_flag=True,
                     help="Learn the pseudo rows' probability vectors instead of their argmax (--head classify)."),
        click.option("--teacher", default=None, metavar="RUN",
                     help="Distil: learn RUN's probabilities beside the labels (its oof.csv; under `kit cv` its "
                          "fold-k model for fold k; a blend: its members' fold-k models). "
                          "Loss (1 - W) * CE + W * T^2 * KL(teacher_T || student_T)."),
        click.option("--kl-weight", type=FiniteFloat(0, 1), default=DEFAULTS_T.kl_weight, show_default=True,
                     help="W: the teacher's share of the loss."),
        click.option("--kd-temperature", "--temperature", "temperature", cls=FirstNameOnly,
                     type=FiniteFloat(0, min_open=True), default=DEFAULTS_T.temperature, show_default=True,
                     help="T (distillation): both distributions are softened by it before the KL."),
        click.option("--predict-batch-size", type=click.IntRange(min=1), default=DEFAULTS_M.predict_batch_size,
                     show_default=True),
        click.option("--overwrite", is_flag=True,
                     help="Replace a kit run folder of the same name that was made with other settings (never a "
                          "folder the kit did not create, never through a symbolic link)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def split_args(options):
    """CLI keyword arguments -> (ModelArgs, TrainArgs, max_length); the run-time flags
    (trust_remote_code, overwrite) stay in options."""
    model_keys = {f.name for f in fields(ModelArgs)}
    train_keys = {f.name for f in fields(TrainArgs)}
    model = {k: v for k, v in options.items() if k in model_keys}
    if model.get("gradient_checkpointing") is None:
        model["gradient_checkpointing"] = "auto"
    if model.get("lora_targets"):
        model["lora_targets"] = [t.strip() for t in model["lora_targets"].split(",") if t.strip()]
    return (ModelArgs(**model), TrainArgs(**{k: v for k, v in options.items() if k in train_keys}),
            options.get("max_length"))


def open_spec(spec_path, max_length=None):
    spec = load_spec(spec_path)
    if max_length:
        spec.max_length = max_length
    return spec


def say(text=""):
    """Command output, printed once: by rank 0 when several ranks run the command."""
    if dist.is_main():
        click.echo(text)


def friendly(command):
    """KitError -> one line and exit 2; Ctrl-C -> exit 130; tracebacks only with --debug."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KitError as error:
            if click.get_current_context().find_root().meta.get("kit.debug"):
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished files are kept; re-run to resume", err=True)
            sys.exit(130)
    return wrapper
