"""The command line: the `kit` group. Each verb lives in the module of its family
(commands/data.py, fit.py, runs.py, serving.py, bench.py) and is imported only when it runs, so
`kit --help`, `kit check`, `kit runs`, `kit report` and `kit score` never import torch."""
import importlib
import logging

import click

from kit import __version__
from kit.core import dist
from kit.core.extras import missing_extra
from kit.core.logs import setup

# verb -> (module, function, the one-line help `kit --help` lists without importing the module;
# tests/test_layers.py checks it against the command's own)
VERBS = {
    "check": ("kit.commands.data", "check", "Validate the spec and every file it names (and optionally a submission), without training."),
    "prepare": ("kit.commands.data", "prepare", "Write the instruction data (Alpaca JSON, chat JSONL, dataset_info.json)."),
    "score": ("kit.commands.data", "score", "Score a predictions or submission file against labelled rows."),
    "train": ("kit.commands.fit", "train", "Fine-tune on the whole train split; saves runs/<name>/."),
    "cv": ("kit.commands.fit", "cv", "Cross-validate: OOF score, per-fold spread, the TF-IDF baseline beside it."),
    "predict": ("kit.commands.fit", "predict", "Predict a split and write a validated submission."),
    "auto": ("kit.commands.fit", "auto_command", "Try the roads under one budget on the same folds, score them honestly, and name what to upload."),
    "blend": ("kit.commands.fit", "blend_command", "Blend runs (names under runs/ or paths): simplex weights fitted on their OOF rows."),
    "runs": ("kit.commands.runs", "runs_command", "Every run as a leaderboard: one table per spec, best CV score first, unscored runs last."),
    "report": ("kit.commands.runs", "report_command", "Write one self-contained HTML page: the leaderboard, then each run's plots."),
    "cache": ("kit.commands.cache", "cache", "Show (or --clear) the frozen lower blocks' state cache: runs/.state-cache, or $KIT_STATE_CACHE."),
    "bundle": ("kit.commands.bundle", "bundle_command", "Write the folder to upload for an offline competition notebook: the kit and its missing wheels, runs, spec, run.py."),
    "serve": ("kit.commands.serving", "serve", "Serve a trained run over HTTP, OpenAI-compatible: /v1/models, /v1/chat/completions, /v1/classify."),
    "export": ("kit.commands.serving", "export", "Export a trained run for serving engines: LoRA merged, tokenizer, prompt format, vLLM commands."),
    "bench": ("kit.commands.bench", "bench", "Measure predict and train speed against the usual way (naive loop, transformers.Trainer)."),
    "bench-gpu": ("kit.commands.bench", "bench_gpu", "Benchmark the GPU road against transformers.Trainer + peft and model.generate loops."),
}


def _debug_after_the_verb(ctx, param, value):
    if value:
        ctx.find_root().meta["kit.debug"] = True


# `kit check --debug` as well as `kit --debug check`: every verb takes the flag
DEBUG = click.Option(["--debug"], is_flag=True, expose_value=False, hidden=True, callback=_debug_after_the_verb)


class LazyGroup(click.Group):
    """Click's lazily loaded subcommands: a verb's module is imported when that verb runs."""

    def list_commands(self, ctx):
        return list(VERBS)

    def get_command(self, ctx, name):
        if name not in VERBS:
            return None
        module, function, _ = VERBS[name]
        try:
            command = getattr(importlib.import_module(module), function)
        except ModuleNotFoundError as error:
            friendly = missing_extra(error, f"kit {name}")
            if friendly is None:
                raise
            click.echo(f"error: {friendly}", err=True)
            ctx.exit(2)
        if DEBUG not in command.params:
            command.params.append(DEBUG)
        return command

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
        except click.exceptions.Exit as stop:
            dist.leave(finished=stop.exit_code == 0)
            raise
        except BaseException:
            dist.leave(finished=False)
            raise
        dist.leave()
        return result

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in VERBS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="kit", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug):
    """kit: fine-tune an instruction LLM (or a baseline) on a competition's CSVs, score it with
    honest cross-validation, and write a validated submission.

    \b
    Typical use:
      python -m kit check                  validate the spec and its files
      python -m kit cv --holdout 0.2       local score, beside the TF-IDF baseline
      python -m kit train                  fine-tune on all of train.csv -> runs/<name>/
      python -m kit predict --split testB  -> submissions/submit.csv
    """
    click.get_current_context().meta["kit.debug"] = debug
    setup(logging.INFO if dist.is_main() else logging.WARNING)
    dist.init()          # under torchrun / accelerate launch: join the ranks' process group
