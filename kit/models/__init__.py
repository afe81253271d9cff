"""Estimators behind one interface, and a registry that picks the class for a model name."""
from .base import (EMBEDDED_ENCODER, EMBEDDED_LLM, FROZEN_STATES, HEADS, RUNTIME_ARGS_MODEL, TFIDF, Estimator, ModelArgs,
                   NotFittedError,
                   Prediction, Task)
from .embedded import base_identity, resolve_model
from .tfidf import TfidfModel
from .transformer import TransformerModel
from .keywords import KeywordExtractor, KeywordWriter  # noqa: E402 (after TransformerModel, which it extends)

REGISTRY = {cls.kind: cls for cls in (TfidfModel, TransformerModel, KeywordExtractor, KeywordWriter)}


def kind_of(model_args):
    return TfidfModel.kind if model_args.model == TFIDF else TransformerModel.kind


def make_model(task, args, train_args, trust_remote_code=False):
    return REGISTRY[kind_of(args)](task, args, train_args, trust_remote_code=trust_remote_code)


def load_model(directory, trust_remote_code=False):
    """A saved estimator. The folder's files only describe it: nothing in them can run code
    (no pickle; `trust_remote_code` comes from the caller's command line, never the folder)."""
    state = Estimator.read_model_file(directory)
    cls = REGISTRY.get(state.get("kind"))
    if cls is None:
        from ..errors import KitError
        raise KitError(f"{directory}: unknown model kind {state.get('kind')!r}; known: {sorted(REGISTRY)}")
    return cls.load(directory, trust_remote_code=trust_remote_code)


__all__ = ["EMBEDDED_ENCODER", "EMBEDDED_LLM", "FROZEN_STATES", "HEADS", "TFIDF", "Estimator", "ModelArgs", "NotFittedError",
           "Prediction", "RUNTIME_ARGS_MODEL", "Task", "REGISTRY", "KeywordExtractor", "KeywordWriter", "TfidfModel", "TransformerModel", "base_identity", "kind_of",
           "load_model", "make_model", "resolve_model"]
