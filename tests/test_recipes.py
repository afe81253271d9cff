"""benchmarks/recipes.py's bootstrap metric equals scikit-learn's on the rows it draws."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kit.evaluation.metrics import metric_value

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "recipes.py"


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("metric,k", [("f1", 2), ("macro_f1", 2), ("macro_f1", 5), ("accuracy", 3)])
def test_confusion_metric_equals_scikit_learn(recipes, metric, k):
    rng = np.random.default_rng(k)
    truth, predicted = rng.integers(0, k, 200), rng.integers(0, k, 200)
    predicted[:120] = truth[:120]
    samples = rng.integers(0, 200, size=(20, 200))
    samples[0] = np.arange(200)
    fast = recipes.confusion_metric(metric, truth, predicted, k, samples)
    slow = [metric_value(metric, truth[s], predicted[s]) for s in samples]
    np.testing.assert_allclose(fast, slow, atol=1e-12)
