"""`kit check`, `kit prepare` and `kit score`: the verbs that need no model."""
import click

from kit.commands.options import friendly, open_spec, say, spec_option
from kit.core.errors import KitError
from kit.inputs import shapes
from kit.inputs.check import check_all
from kit.inputs.data import read_csv
from kit.inputs.prepare import prepare as write_prepared
from kit.workflows.score import format_score, score_file, score_target_columns


@click.command()
@spec_option
@click.option("--out", default="data/prepared", show_default=True, help="Folder for the instruction data.")
@friendly
def prepare(spec_path, out):
    """Write the instruction data (Alpaca JSON, chat JSONL, dataset_info.json)."""
    result = write_prepared(open_spec(spec_path), out)
    for name, (rows, files) in result["written"].items():
        say(f"prepared {name}: {rows} rows: {', '.join(files)}")
    say(f"dataset info: {result['dataset_info']}")


@click.command()
@spec_option
@click.option("--pred", required=True, type=click.Path(dir_okay=False),
              help="A predictions CSV (runs/<name>/predictions-*.csv, oof.csv) or a submission.")
@click.option("--split", default=None, help="Score against the spec's [answers] file for this split.")
@click.option("--truth", default=None, type=click.Path(dir_okay=False), help="A labelled CSV (id + label columns).")
@friendly
def score(spec_path, pred, split, truth):
    """Score a predictions or submission file against labelled rows."""
    spec = open_spec(spec_path)
    if (split is None) == (truth is None):
        raise KitError("score: give exactly one of --split (uses the spec's [answers]) or --truth FILE")
    if split is not None:
        if split not in spec.answers:
            raise KitError(f"{spec.path}: no [answers] entry for split {split!r}; "
                           f"it has {sorted(spec.answers) or 'none'}; or pass --truth FILE")
        truth = spec.answers[split]
    frame = read_csv(pred)
    keyword_scores = score_target_columns(spec, frame, pred, truth)
    label_columns = ("label", "written", *shapes.label_columns(spec)) if spec.has_labels else ()
    if spec.has_labels and (any(c in frame.columns for c in label_columns if c) or not keyword_scores):
        say(format_score(spec, score_file(spec, pred, truth)))
    for column, scores in keyword_scores.items():
        say(f"{column}: exact P/R/F1 {scores['exact_precision']:.4f} / {scores['exact_recall']:.4f} / "
             f"{scores['exact_f1']:.4f}; partial F1 {scores['partial_f1']:.4f} over {scores['rows']} rows")
    if not spec.has_labels and not keyword_scores:
        raise KitError(f"{pred}: nothing to score; it has none of the columns {sorted(spec.targets)} whose answers "
                       f"{truth} holds")


@click.command()
@spec_option
@click.option("--submission", default=None, type=click.Path(dir_okay=False), help="Also validate this file.")
@click.option("--split", default="test", show_default=True, help="The split the submission is for.")
@friendly
def check(spec_path, submission, split):
    """Validate the spec and every file it names (and optionally a submission), without training."""
    for line in check_all(open_spec(spec_path), submission, split):
        say(line)
