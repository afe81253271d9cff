"""The registry: the estimator class for a model name, and loading a saved estimator by its kind."""
from kit.core.errors import KitError
from kit.core.settings import TFIDF
from kit.inputs.tasks import KeywordTask
from kit.models.base import Estimator
from kit.models.keywords import KeywordExtractor, KeywordWriter, make_keyword_model
from kit.models.tfidf import TfidfModel
from kit.models.transformer import TransformerModel

REGISTRY = {cls.kind: cls for cls in (TfidfModel, TransformerModel, KeywordExtractor, KeywordWriter)}


def kind_of(model_args):
    return TfidfModel.kind if model_args.model == TFIDF else TransformerModel.kind


def make_model(task, args, train_args, trust_remote_code=False):
    """The estimator for a task and a model name: a keyword task's road (extractor or LLM writer), or
    the label's (TF-IDF or a transformer)."""
    if isinstance(task, KeywordTask):
        return make_keyword_model(task, args, train_args, trust_remote_code)
    return REGISTRY[kind_of(args)](task, args, train_args, trust_remote_code=trust_remote_code)


def load_model(directory, trust_remote_code=False):
    """A saved estimator. The folder's files only describe it: nothing in them can run code
    (no pickle; `trust_remote_code` comes from the caller's command line, never the folder)."""
    state = Estimator.read_model_file(directory)
    cls = REGISTRY.get(state.get("kind"))
    if cls is None:
        raise KitError(f"{directory}: unknown model kind {state.get('kind')!r}; known: {sorted(REGISTRY)}")
    return cls.load(directory, trust_remote_code=trust_remote_code)


