"""`kit runs` and `kit report`: what is in runs/, as a table and as one HTML page."""
import json

import click

from kit.commands.options import RUN_NAMES, RUNS_DIR, friendly, say
from kit.inputs.spec import DEFAULT_SPEC, load_spec
from kit.outputs.report import REPORT, TOP_RUNS, collect_runs, format_groups, group_by_spec, select, write_report
from kit.runs.folder import load_run


@click.command("runs")
@click.option("--spec", default=None, help="Only runs of this spec: a spec file (its path or current version) "
                                           "or a spec name.")
@click.option("--model", default=None, help="Only runs of this model: tfidf, smollm2, minilm, a model directory "
                                            "or its folder name.")
@click.option("--json", "as_json", is_flag=True, help="Print the tables as JSON, for scripts.")
@RUNS_DIR
@friendly
def runs_command(spec, model, as_json, runs_dir):
    """Every run as a leaderboard: one table per spec, best CV score first, unscored runs last."""
    entries, notices = collect_runs(runs_dir)
    for notice in notices:                  # stderr, so --json output stays parseable
        click.echo(notice, err=True)
    groups = group_by_spec(select(entries, spec, model))
    if as_json:
        say(json.dumps({"runs_dir": str(runs_dir), "groups": groups, "skipped": notices}, indent=2, default=str))
    elif not groups:
        say(f"no runs in {runs_dir}/" + (" match the filters" if spec or model else ""))
    else:
        say(format_groups(groups))


@click.command("report")
@click.argument("run_names", nargs=-1, metavar="[RUN]...")
@click.option("--spec", "spec_path", default=None, type=click.Path(dir_okay=False),
              help="Without RUN: report the best runs of this spec by CV score [default: data/competition.toml].")
@click.option("--out", default=str(REPORT), show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file (self-contained: opens offline).")
@click.option("--split", default=None,
              help="The predicted split compared with the OOF probabilities [default: test, else any predicted split].")
@click.option("--top", type=click.IntRange(min=1), default=TOP_RUNS, show_default=True,
              help="Without RUN: how many of the spec's best runs to report on.")
@RUN_NAMES
@RUNS_DIR
@friendly
def report_command(run_names, spec_path, out, split, top, run_options, runs_dir):
    """Write one self-contained HTML page: the leaderboard, then each run's plots.

    Per run: the fold scores, confusion matrix, threshold and ROC curves (binary), calibration,
    loss curves, OOF-vs-test shift and the most confident mistakes."""
    directories = [load_run(name, runs_dir).directory for name in (*run_names, *run_options)]
    spec = None if directories else load_spec(spec_path or DEFAULT_SPEC)
    path = write_report(directories, spec, out, split, runs=runs_dir, top=top)
    say(f"report: {path}")
