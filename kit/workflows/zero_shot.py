"""`kit cv --zero-shot`: candidate base models scored with no training, on the same labelled rows.

The seeds' recipe for picking a base model before fine-tuning (the GLM-4 sentiment write-up scores
Qwen2-7B, internlm2.5 and glm-4-9b zero-shot on 50 labelled rows and keeps the best): each
candidate answers the spec's prompt and is read by constrained label scoring (P(label word)
from one forward pass), on the training rows or a stratified sample of them. Nothing is trained and
nothing is written to runs/: a head that exists only after training (classify, TF-IDF) has nothing
to score with and is refused before any candidate runs."""
import time
from dataclasses import replace

import numpy as np
from sklearn.model_selection import train_test_split

from kit.core.errors import KitError
from kit.core.logs import log
from kit.evaluation.metrics import metric_info, report
from kit.models.registry import make_model
from kit.tasks.columns import column_of


def sample_rows(rows, count=None, seed=0):
    """All rows, or a stratified sample of count of them (seeded), in their file order."""
    if count is None or count >= len(rows):
        return rows
    if count < 2:
        raise KitError(f"--rows {count}: score at least 2 rows")
    labels = np.asarray(rows.labels)
    counts = np.bincount(labels)
    classes = len(counts[counts > 0])
    # stratifying needs two rows of every label, and every label on both sides of the split
    stratify = labels if counts[counts > 0].min() >= 2 and min(count, len(rows) - count) >= classes else None
    index, _ = train_test_split(np.arange(len(rows)), train_size=count, random_state=seed, stratify=stratify)
    return rows.subset(sorted(index.tolist()))


def zero_shot(spec, model_args, train_args, models, count=None, seed=0, trust_remote_code=False):
    """[{model, metric value, accuracy, rows, seconds, report}] per candidate, in the order given."""
    column = column_of(spec, None, "score zero-shot")
    if not column.zero_shot:
        raise KitError(f"--zero-shot scores label words; {column} has none to answer (a number or several label "
                       "columns are learned by a trained head)")
    rows = sample_rows(column.rows("train")[0], count, seed)
    task = column.estimator_task()
    candidates = [make_model(task, replace(model_args, model=name, head="generate"), train_args, trust_remote_code)
                  for name in models]
    for candidate in candidates:               # every refusal before any candidate loads its weights
        candidate.check_zero_shot()
    results = []
    for name, candidate in zip(models, candidates):
        log(f"zero-shot: {name} on {len(rows)} labelled rows (no training)")
        start = time.time()
        prediction = candidate.zero_shot().predict(rows, "score")
        seconds = time.time() - start
        result = report(np.asarray(rows.labels), prediction.probs, spec.labels, spec.metric)
        results.append({"model": name, "metric": spec.metric, "score": result[spec.metric],
                        "accuracy": result["accuracy"], "rows": len(rows), "seconds": round(seconds, 1),
                        "report": result})
    return results


def format_zero_shot(results, spec):
    metric = results[0]["metric"]
    lines = [f"zero-shot on {results[0]['rows']} labelled rows of {spec.train} (the same rows for every model; "
             "nothing trained, P(label word) read from one forward pass)",
             f"| model | {metric} | accuracy | seconds |", "| --- | --- | --- | --- |"]
    info = metric_info(metric)
    binary = len(spec.labels) == 2
    if binary and metric != "auc":
        lines[1], lines[2] = f"| model | {metric} (at 0.5) | accuracy | auc | seconds |", "| --- | --- | --- | --- | --- |"
    for r in sorted(results, key=lambda r: info.sort_key(r["score"]) if np.isfinite(r["score"]) else np.inf):
        auc = f" {r['report']['auc']:.4f} |" if binary and metric != "auc" else ""
        lines.append(f"| {r['model']} | {r['score']:.4f} | {r['accuracy']:.4f} |{auc} {r['seconds']} |")
    return "\n".join(lines)
