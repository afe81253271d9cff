"""The predicted columns of a submission, one task kind per module: the label (label.py) and
keyword lists (keywords.py). Each supplies its rows, the estimator's task, its folds, its scores
and out-of-fold table, its per-row predictions file and its submission values; fit, CV, predict
and score (kit/workflows) are written once against that interface (see columns.py)."""
