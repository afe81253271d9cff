"""Fold assignment: stratified k-fold or one holdout, from a fold seed of its own."""
import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from kit.core.errors import KitError


def merge_small_strata(strata, at_least):
    """Strata with fewer than at_least rows pooled, smallest first, into groups of at_least rows or
    more; a last pool still short of it joins the largest stratum. Stratifying by several label
    columns' rarest positive makes such strata (a column with 3 positives under 5 folds), and
    StratifiedKFold cannot split a stratum smaller than its folds."""
    strata = np.asarray(strata).copy()
    values, counts = np.unique(strata, return_counts=True)
    pool, pooled = None, 0
    for value, count in sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: vc[1]):
        if count >= at_least:
            break
        pool = value if pool is None else pool
        strata[strata == value] = pool
        pooled += count
        if pooled >= at_least:
            pool, pooled = None, 0
    if pool is not None:
        strata[strata == pool] = values[counts.argmax()]
    return strata


def assign_folds(labels, folds=5, seed=0, holdout=None):
    """Fold number per row (stratified). With holdout, one split: fold 0 is the held-out part
    and -1 marks rows that are only ever trained on."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if holdout is not None:
        if not 0 < holdout < 1:
            raise KitError(f"--holdout {holdout}: must be a fraction between 0 and 1")
        _, held = train_test_split(np.arange(len(labels)), test_size=holdout, random_state=seed,
                                   stratify=labels if counts[counts > 0].min() >= 2 else None)
        fold = np.full(len(labels), -1)
        fold[held] = 0
        return fold
    if folds < 2:
        raise KitError(f"--folds {folds}: need at least 2 (or use --holdout)")
    smallest = counts[counts > 0].min()
    if smallest < folds:
        raise KitError(f"--folds {folds}: the rarest label has only {smallest} rows")
    fold = np.zeros(len(labels), dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for number, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held] = number
    return fold
