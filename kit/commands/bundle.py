"""`kit bundle`: the folder to upload for an offline competition notebook (kit/outputs/bundle.py)."""
from pathlib import Path

import click

from kit.commands.options import RUN_NAMES, RUNS_DIR, friendly, open_spec, say, spec_option
from kit.core.errors import KitError
from kit.outputs.bundle import bundle
from kit.tasks.columns import label_column, predicted_columns
from kit.workflows.predict import find_run


@click.command("bundle")
@spec_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The bundle folder to write.")
@click.option("--models", type=click.Choice(["auto", "full", "folds", "merged"]), default="auto", show_default=True,
              help="What the bundle predicts with (as kit predict --models).")
@click.option("--threshold", default=None, help="As kit predict --threshold (binary tasks: a number or 'oof').")
@click.option("--target-run", "target_runs", multiple=True, metavar="COLUMN=RUN",
              help="The run of a [targets] column (default: its latest trained run). Repeatable.")
@click.option("--fallback", default=None,
              help="A fast run of this spec shipped too: run.py --time-budget decides the rows left with it.")
@click.option("--second-pass", default=None, metavar="RUN",
              help="Another run of this spec shipped too: run.py --time-budget spends the time left after every row "
                   "is predicted re-scoring the least certain rows with it (kit predict --second-pass).")
@click.option("--image", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A `pip freeze` of the notebook's image: only what it lacks is shipped as wheels "
                   "[default: the image has torch and nothing else the kit needs].")
@click.option("--python", "python", default=None, metavar="X.Y",
              help="The image's Python, for its compiled wheels [default: this machine's].")
@click.option("--force", is_flag=True, help="Replace an earlier bundle at --out (never a folder of other files).")
@RUN_NAMES
@RUNS_DIR
@friendly
def bundle_command(spec_path, out, models, threshold, target_runs, fallback, second_pass, image, python, force,
                   run_options, runs_dir):
    """Write the folder to upload for an offline competition notebook: the kit and its missing wheels, runs, spec, run.py."""
    spec = open_spec(spec_path)
    runs = Path(runs_dir)
    if len(run_options) > 1:
        raise KitError("kit bundle predicts with one run of the label (--run); blend first, then bundle the "
                       "members' runs one by one")
    pairs = dict(pair.partition("=")[::2] for pair in target_runs)
    chosen, predict_args = [], ["--models", models] + (["--threshold", threshold] if threshold else [])
    for column in predicted_columns(spec):
        name = pairs.get(column.target) if column.target else (run_options[0] if run_options else None)
        run = find_run(column, name, runs=runs)
        if run is None:
            continue                    # an extractor with nothing to train: rebuilt in the notebook
        chosen.append(run)
        predict_args += ["--target-run", f"{column.target}={run.name}"] if column.target else ["--run-name", run.name]
    column = label_column(spec) if spec.has_labels else None
    if threshold is not None and column is not None:     # 'oof' without a CV is refused here, not in the notebook
        column.threshold(threshold, chosen[0].cv_scores, chosen[0].key)
    budget_runs = {}
    for option, name in (("fallback", fallback), ("second_pass", second_pass)):
        if name is None:
            continue
        if column is None:
            raise KitError(f"--{option.replace('_', '-')} helps predict the label's rows; this spec has no label")
        helper = find_run(column, name, runs=runs)
        if option == "second_pass" and helper.directory == chosen[0].directory:
            raise KitError(f"--second-pass {name} is the label's run; name another run of this spec, whose "
                           "probabilities are averaged in")
        chosen.append(helper)
        budget_runs[option] = helper.name
    one_process = any(c.one_process for c in predicted_columns(spec))
    manifest = bundle(spec, chosen, out, image, python, predict_args, budget_runs, one_process, force)
    say(f"bundle {out}: {len(manifest['wheels'])} wheels, runs {', '.join(manifest['runs'])}; "
        f"{manifest['bytes'] / 2 ** 20:.1f} MiB")
    say(f"upload it as a dataset; in the notebook: python /kaggle/input/{Path(out).name}/run.py --data "
        "/kaggle/input/COMPETITION --out /kaggle/working/submission.csv --work /kaggle/working")
