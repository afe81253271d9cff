"""Fold assignment: stratified k-fold or one holdout, from a fold seed of its own."""
import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from kit.core.errors import KitError


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
