"""The classical baseline: word 1-2 gram TF-IDF + logistic regression with balanced class
weights, its C chosen by an inner 3-fold CV on the training rows only (a baseline worth
beating: on the 5-class medical abstracts a fixed C=4 without class weights gave macro-F1
0.44 where this gives about 0.57). When the metric scores probabilities (auc, logloss), C is chosen
by log loss and the class weights are left out, so the probabilities keep the class prior. A number
task gets ridge regression on the same features, its alpha chosen by leave-one-out on the training
rows (scikit-learn's efficient RidgeCV); several label columns get one binary logistic regression per
column (one-vs-rest), each with its own C.

Saved as JSON (settings, vocabulary) and a NumPy .npz of plain arrays, never a pickle: a model
folder from someone else must not be able to run code when it is loaded.
"""
import inspect
import json
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV

from kit.core.errors import KitError
from kit.core.settings import TFIDF
from kit.models.base import Estimator, Prediction

VECTORIZER = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1, "strip_accents": "unicode"}
ARRAYS = "tfidf.npz"
RIDGE_ALPHAS = (0.3, 1.0, 3.0, 10.0)


def logistic_cv(**options):
    """LogisticRegressionCV with its default l2 penalty, on every supported scikit-learn: from 1.8
    the penalty is named by l1_ratios, and use_legacy_attributes=False takes C_'s new shape (the
    code reads C_ flattened, which both shapes give); before, neither option exists."""
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
        options.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    return LogisticRegressionCV(**options)


def refuse_soft_targets(soft, teacher):
    """Logistic regression learns hard labels only (hard pseudo-labels are plain rows)."""
    if teacher:
        raise KitError("--teacher: the TF-IDF model cannot learn a teacher's probabilities; distil into an LLM "
                       "or encoder (--model smollm2, minilm, a path)")
    if soft:
        raise KitError("--pseudo-soft: the TF-IDF model learns hard labels only; drop --pseudo-soft (soft "
                       "targets need --head classify on an LLM or encoder)")


class ColumnClassifiers:
    """One binary logistic regression per label column (plain arrays: coef rows x features,
    intercepts); a column that is constant in the training rows predicts its constant."""
    CS = (0.25, 1.0, 4.0, 16.0)

    def __init__(self, coef, intercept, C):
        self.coef_, self.intercept_, self.C = np.asarray(coef, float), np.asarray(intercept, float), C

    @classmethod
    def fit(cls, features, flags, calibrated, seed):
        coef, intercept, chosen = np.zeros((flags.shape[1], features.shape[1])), np.zeros(flags.shape[1]), []
        for j in range(flags.shape[1]):
            y = flags[:, j]
            rarer = min(int(y.sum()), int(len(y) - y.sum()))
            if rarer == 0:            # all 0 or all 1 here: the constant, as a logit
                share = np.clip(y.mean(), 1e-4, 1 - 1e-4)
                intercept[j] = np.log(share / (1 - share))
                chosen.append(None)
                continue
            weights = None if calibrated else "balanced"
            if rarer >= 3:            # C by an inner 3-fold CV, as for one label
                fitted = logistic_cv(Cs=list(cls.CS), cv=3, scoring="neg_log_loss" if calibrated else "f1",
                                     class_weight=weights, max_iter=2000, random_state=seed).fit(features, y)
                c = float(np.ravel(fitted.C_)[0])
            else:                     # too few positives to cross-validate C
                fitted, c = LogisticRegression(C=1.0, class_weight=weights, max_iter=2000).fit(features, y), 1.0
            coef[j], intercept[j] = fitted.coef_[0], fitted.intercept_[0]
            chosen.append(c)
        return cls(coef, intercept, chosen)

    def predict_proba(self, features):
        return 1 / (1 + np.exp(-(features @ self.coef_.T + self.intercept_)))


class TfidfModel(Estimator):
    kind = TFIDF

    def __init__(self, task, args=None, train_args=None, trust_remote_code=False):
        super().__init__(task, args, train_args, trust_remote_code)
        self.vectorizer = self.classifier = None

    @property
    def fitted(self):
        return self.classifier is not None

    def check_levers(self, soft, teacher):
        refuse_soft_targets(soft, teacher)

    def check_zero_shot(self):
        raise KitError("tfidf: TF-IDF learns its vocabulary and weights from the training rows; it has no "
                       "zero-shot score")

    def fit(self, rows, **_):
        self.check_levers(rows.soft is not None, rows.teacher is not None)
        # a metric over probabilities wants them calibrated: C by log loss, the class prior kept
        calibrated = getattr(self.task, "calibrated", False)
        scoring = "neg_log_loss" if calibrated else "f1" if len(self.task.words) == 2 else "f1_macro"
        self.vectorizer = TfidfVectorizer(**VECTORIZER)
        features = self.vectorizer.fit_transform(rows.texts)
        if self.task.regression:
            self.classifier = RidgeCV(alphas=RIDGE_ALPHAS).fit(features, np.asarray(rows.labels, float))
            self._fitted_now()
            return self
        if self.task.several:
            self.classifier = ColumnClassifiers.fit(features, np.asarray(rows.labels, int), calibrated,
                                                    self.train_args.seed)
            self._fitted_now()
            return self
        self.classifier = logistic_cv(
            Cs=[0.25, 1.0, 4.0, 16.0], cv=3, scoring=scoring, class_weight=None if calibrated else "balanced",
            max_iter=2000, random_state=self.train_args.seed).fit(features, rows.labels)
        self._fitted_now()
        return self

    def predict(self, rows, mode="score", **_):
        self._require_fitted("predict")
        if self.task.regression:      # the number, as the one column of the prediction's outputs
            values = self.classifier.predict(self.vectorizer.transform(rows.texts))
            return Prediction(np.asarray(values, float).reshape(-1, 1), [TFIDF] * len(rows))
        if self.task.several:
            return Prediction(self.classifier.predict_proba(self.vectorizer.transform(rows.texts)), [TFIDF] * len(rows))
        probs = np.zeros((len(rows), len(self.task.words)))
        probs[:, self.classifier.classes_] = self.classifier.predict_proba(self.vectorizer.transform(rows.texts))
        return Prediction(probs, [TFIDF] * len(rows))

    def save(self, directory):
        self._require_fitted("save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocabulary = {term: int(index) for term, index in self.vectorizer.vocabulary_.items()}
        if self.task.several:
            self._write_model_file(directory, vocabulary=vocabulary, vectorizer=VECTORIZER, C=self.classifier.C)
            np.savez(directory / ARRAYS, idf=self.vectorizer.idf_, coef=self.classifier.coef_,
                     intercept=self.classifier.intercept_)
            return
        if self.task.regression:
            self._write_model_file(directory, vocabulary=vocabulary, vectorizer=VECTORIZER,
                                   alpha=float(self.classifier.alpha_))
            np.savez(directory / ARRAYS, idf=self.vectorizer.idf_, coef=self.classifier.coef_,
                     intercept=np.atleast_1d(self.classifier.intercept_))
            return
        self._write_model_file(directory, vocabulary=vocabulary, vectorizer=VECTORIZER,
                               C=float(np.ravel(self.classifier.C_)[0]))
        np.savez(directory / ARRAYS, idf=self.vectorizer.idf_, coef=self.classifier.coef_,
                 intercept=self.classifier.intercept_, classes=self.classifier.classes_)

    @classmethod
    def load(cls, directory, trust_remote_code=False):
        state = cls.read_model_file(directory)
        model = cls._from_state(state)
        try:
            arrays = np.load(Path(directory) / ARRAYS, allow_pickle=False)   # plain arrays only
            settings = {**state["vectorizer"], "ngram_range": tuple(state["vectorizer"]["ngram_range"])}
            vectorizer = TfidfVectorizer(**settings)
            vectorizer.vocabulary_ = state["vocabulary"]
            vectorizer.idf_ = arrays["idf"]
            if model.task.several:
                classifier = ColumnClassifiers(arrays["coef"], arrays["intercept"], list(state["C"]))
            elif model.task.regression:
                classifier = Ridge(alpha=state["alpha"])
                classifier.coef_, classifier.intercept_ = arrays["coef"], float(arrays["intercept"][0])
            else:
                classifier = LogisticRegression(C=state["C"])
                classifier.classes_, classifier.coef_ = arrays["classes"], arrays["coef"]
                classifier.intercept_ = arrays["intercept"]
            classifier.n_features_in_ = arrays["coef"].shape[-1]
        except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            raise KitError(f"{directory}: not a readable TF-IDF model: {error}") from None
        model.vectorizer, model.classifier = vectorizer, classifier
        return model
