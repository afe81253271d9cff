"""The [[extra]] experiment: a spec's training file cut in two, the second part supplied as an extra
labelled file under another schema, `kit cv` with and without it on the same folds of the first part.

    python benchmarks/extra_rows.py --spec specs/disaster.toml [--keep 0.6] [--model tfidf] [--folds 5]

It prints, per road, the OOF rows scored (the same count with and without the extra rows: they are
never held out) and the OOF score. The derived CSVs and specs live under runs/extra-rows/<spec>/,
never in the repository; the spec's own data is read where the spec says (../shared/data for the
specs in specs/)."""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.core.errors import KitError  # noqa: E402
from kit.core.settings import ModelArgs, TrainArgs  # noqa: E402
from kit.inputs.data import read_csv  # noqa: E402
from kit.inputs.spec import load_spec, read_toml  # noqa: E402
from kit.workflows.cv import cross_validate  # noqa: E402


def derived_specs(spec, keep, out):
    """(spec without extra, spec with extra): the first `keep` of the training rows as train.csv,
    the rest as extra.csv with every column renamed (x_<name>), named in [[extra]]."""
    frame = read_csv(spec.train)
    cut = int(len(frame) * keep)
    out.mkdir(parents=True, exist_ok=True)
    frame.iloc[:cut].to_csv(out / "train.csv", index=False)
    frame.iloc[cut:].rename(columns=lambda c: f"x_{c}").to_csv(out / "extra.csv", index=False)
    raw = read_toml(spec.path)
    fields = spec.template_columns()
    renamed = spec.input_template
    for column in fields:
        renamed = renamed.replace("{" + column + "}", "{x_" + column + "}")
    specs = []
    for name, extra in (("without", ""), ("with", f'\n[[extra]]\nfile = "extra.csv"\nlabel = "x_{spec.label_column}"\n'
                                                  f"input = {json.dumps(renamed)}\n")):
        text = (f'name = "{spec.name}-{name}-extra"\ntrain = "train.csv"\n[columns]\nid = {json.dumps(spec.id_column)}\n'
                f"label = {json.dumps(spec.label_column)}\ninput = {json.dumps(spec.input_template)}\n"
                f"[task]\n{_table(raw['task'])}" + extra)
        path = out / f"{name}.toml"
        path.write_text(text)
        specs.append(load_spec(path))
    return specs, cut, len(frame) - cut


def _table(table):
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--keep", type=float, default=0.6, help="The share of the training rows kept as train.csv.")
    parser.add_argument("--model", action="append", help="Roads to compare (default: tfidf).")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    try:
        spec = load_spec(args.spec)
        out = ROOT / "runs" / "extra-rows" / spec.name
        (without, with_extra), kept, extra = derived_specs(spec, args.keep, out)
    except KitError as error:
        sys.exit(f"error: {error}")
    print(f"{spec.name}: {kept} training rows kept, {extra} supplied as [[extra]] under other column names")
    print("| road | extra rows | OOF rows scored | OOF score | cv wall s |\n| --- | --- | --- | --- | --- |")
    for model in args.model or ["tfidf"]:
        for derived, label in ((without, "none"), (with_extra, str(extra))):
            start = time.time()
            scores = cross_validate(derived, ModelArgs(model=model), TrainArgs(), folds=args.folds,
                                    runs=out / "runs")
            print(f"| {model} | {label} | {scores['rows']} | {spec.metric} {scores[spec.metric]:.4f} | "
                  f"{time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
