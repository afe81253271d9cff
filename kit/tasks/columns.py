"""Which task serves a column: `column_of(spec, target)` for the verbs that work on one column
(`kit train`, `kit cv`: the label, or `--target COLUMN`), `predicted_columns(spec)` for the
verbs that write them all (`kit predict`)."""
from kit.core.errors import KitError
from kit.tasks.keywords import KeywordColumn
from kit.tasks.label import LabelColumn
from kit.tasks.number import NumberColumn
from kit.tasks.several import SeveralLabelsColumn


def column_of(spec, target=None, command="train"):
    """The label's task, or with target the task of that [targets] column."""
    if target:
        return KeywordColumn(spec, target)
    if not spec.has_labels:
        raise KitError(f"{spec.path} has no [columns] label; {command} a predicted column with --target "
                       f"{next(iter(spec.targets))}")
    return label_column(spec)


def label_column(spec):
    """The task of the spec's [columns] label: labels, a number per row (shape number), or several
    0/1 label columns."""
    if spec.several_labels:
        return SeveralLabelsColumn(spec)
    return NumberColumn(spec) if spec.shape == "number" else LabelColumn(spec)


def predicted_columns(spec):
    """Every column a submission of this spec predicts: the label (when it has one), then its [targets]."""
    return ([label_column(spec)] if spec.has_labels else []) + [KeywordColumn(spec, c) for c in spec.targets]
