"""kit.evaluation.keywords: reading, parsing, scoring and extracting keyword lists."""
import math

import numpy as np
import pytest

from kit.core.errors import KitError
from kit.evaluation.keywords import (
    SEPARATORS,
    infer_separator,
    keyword_scores,
    normalise,
    paper_scores,
    parse_answer,
    split_keywords,
)
from kit.models.extractors import MiniLMExtractor, TfidfExtractor, candidates, mmr


@pytest.mark.parametrize("keyword, expected", [
    ("Neural Networks", "neural network"),
    ("therapies", "therapy"),
    ("classes", "class"),
    ("class", "class"),                      # "ss" is not a plural
    ("ROS", "ros"),                          # three letters: too short to tell
    ("gas", "gas"),
    ("analysis", "analysis"),                # "is"
    ("virus", "virus"),                      # "us"
    ("Dye-sensitized solar cells", "dye sensitized solar cell"),
    ("Convolutional neural networks (CNNs)", "convolutional neural network cnn"),
    ("“Quoted”—text.", "quoted text"),
    ("ＣＮＮ", "cnn"),                        # NFKC folds full-width letters
    ("snake_case", "snake case"),
    ("  --  ", ""),
    ("", ""),
])
def test_normalise(keyword, expected):
    assert normalise(keyword) == expected


def test_separators_constant_covers_the_usual_ones():
    for separator in ("; ", ";", "；", ", ", ",", "，", "、", "|", "\n"):
        assert separator in SEPARATORS


@pytest.mark.parametrize("text, expected", [
    ("Flow cytometry; HDACi; Leukemia; ROS.", ["Flow cytometry", "HDACi", "Leukemia", "ROS"]),
    ("fuzzy ART, GA; x", ["fuzzy ART, GA", "x"]),          # semicolons win over commas
    ("rubella, Congenital Rubella Syndrome, Vietnam.", ["rubella", "Congenital Rubella Syndrome", "Vietnam"]),
    ("1,2-Dicarbonylation; 1,4-Diketone.", ["1,2-Dicarbonylation", "1,4-Diketone"]),
    ("深度学习；神经网络", ["深度学习", "神经网络"]),
    ("Ti", ["Ti"]),
    ("a;; b ; ", ["a", "b"]),
    ("Categorization.", ["Categorization"]),
    ("", []),
    (None, []),
    (float("nan"), []),
])
def test_split_keywords(text, expected):
    assert split_keywords(text) == expected


def test_split_keywords_with_a_given_separator():
    assert split_keywords("a, b|c", separator="|") == ["a, b", "c"]


def test_split_keywords_reads_pandas_missing_values():
    pd = pytest.importorskip("pandas")
    assert split_keywords(pd.NA) == []
    assert [split_keywords(v) for v in pd.Series(["a; b", None])] == [["a", "b"], []]


@pytest.mark.parametrize("values, expected", [
    (["a; b", "c; d", "e, f"], "; "),
    (["a;b", "c;d", "e; f"], ";"),
    (["a, b", "c, d", "e"], ", "),
    (["a,b", float("nan"), ""], ","),
    (["fuzzy ART, GA; x"], "; "),            # a value votes for its semicolon, not its comma
    (["深度学习；神经网络"], "；"),
    (["single", None], "; "),                # nothing to go by: the competition's default
    ([], "; "),
])
def test_infer_separator(values, expected):
    assert infer_separator(values) == expected


@pytest.mark.parametrize("answer, expected", [
    ("flow cytometry; ROS; leukemia", ["flow cytometry", "ROS", "leukemia"]),
    ("Deep learning, Neural networks，图像", ["Deep learning", "Neural networks", "图像"]),
    ("alpha\nbeta\n", ["alpha", "beta"]),
    ("1. Flow cytometry\n2. ROS\n3) Leukemia", ["Flow cytometry", "ROS", "Leukemia"]),
    ("- graph\n* tree\n• forest", ["graph", "tree", "forest"]),
    ("Keywords: a1; b2.", ["a1", "b2"]),
    ("**Keywords**: a1, b2", ["a1", "b2"]),
    ("关键词：深度学习；神经网络", ["深度学习", "神经网络"]),
    ("Neural Networks; neural network; CNN; cnns", ["Neural Networks", "CNN"]),   # first form kept
    ('"ROS"; (CNN); deep learning.', ["ROS", "CNN", "deep learning"]),
    ("Convolutional neural networks (CNNs)", ["Convolutional neural networks (CNNs)"]),
    ("1,2-Dicarbonylation; cyclization", ["1,2-Dicarbonylation", "cyclization"]),
    ("Keywords: a1; b2\n\nThis paper is about a1, and b2 is also important.", ["a1", "b2"]),
    ("ROS; this paper studies how reactive oxygen species change in cells", ["ROS"]),   # sentence: 10 words
    ("x" * 61 + "; ok", ["ok"]),            # over max_chars
    ("", []),
    ("  ;  ,  . ", []),
    (None, []),
])
def test_parse_answer(answer, expected):
    assert parse_answer(answer) == expected


def test_parse_answer_caps_the_count_and_honours_limits():
    answer = "; ".join(f"term{i}" for i in range(15))
    assert parse_answer(answer) == [f"term{i}" for i in range(10)]
    assert parse_answer(answer, max_count=3) == ["term0", "term1", "term2"]
    assert parse_answer("one two three; four", max_words=2) == ["four"]
    assert parse_answer("abcdef; ab", max_chars=5) == ["ab"]


def test_keyword_scores_against_hand_computed_numbers():
    predicted = [["Neural networks", "deep learning", "graph"], [], ["anything"]]
    gold = [["neural network", "machine learning"], ["topic model"], []]
    scores = keyword_scores(predicted, gold)
    # paper 1: P = {neural network, deep learning, graph}, G = {neural network, machine learning}
    #   exact: 1 hit -> p = 1/3, r = 1/2, f1 = 2(1/3)(1/2) / (1/3 + 1/2) = 0.4
    #   partial, best token-F1 per predicted: neural network 1.0; deep learning vs machine
    #     learning 2*1/(2+2) = 0.5; graph 0 -> p = 1.5/3 = 0.5
    #   per gold: neural network 1.0, machine learning 0.5 -> r = 0.75; f1 = 2*.5*.75/1.25 = 0.6
    # paper 2: nothing predicted -> all 0.   paper 3: no gold -> skipped.
    assert scores == {
        "exact_precision": round((1 / 3 + 0) / 2, 4), "exact_recall": 0.25, "exact_f1": 0.2,
        "partial_precision": 0.25, "partial_recall": 0.375, "partial_f1": 0.3,
        "rows": 2, "rows_without_gold": 1, "mean_predicted": 1.5, "mean_gold": 1.5,
    }


def test_paper_scores_and_raw_column_values():
    assert paper_scores(["Neural networks", "deep learning", "graph"], "neural network; machine learning.") \
        == pytest.approx((0.4, 0.6))
    assert paper_scores(["ROS", "ros"], ["ROS."]) == (1.0, 1.0)          # duplicates count once
    assert all(math.isnan(value) for value in paper_scores(["a"], float("nan")))


def test_keyword_scores_skips_papers_without_gold():
    scores = keyword_scores([["a1"], ["b2"]], ["a1", None])
    assert scores["rows"] == 1 and scores["rows_without_gold"] == 1
    assert scores["exact_f1"] == 1.0 and scores["partial_f1"] == 1.0
    empty = keyword_scores([["a1"]], [[]])
    assert empty["rows"] == 0 and empty["exact_f1"] == 0.0


def test_keyword_scores_refuses_lists_of_different_lengths():
    with pytest.raises(KitError, match="2 predicted rows but 1 gold"):
        keyword_scores([["a"], ["b"]], [["a"]])


def _unit(degrees):
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def test_mmr_diversity_changes_the_second_pick():
    document = _unit(0)
    # a (10°) is closest to the document, b (20°) is nearly a again, c (-30°) is further from
    # the document but far from a: relevance alone takes b second, diversity takes c.
    vectors = np.stack([_unit(10), _unit(20), _unit(-30)])
    assert mmr(document, vectors, 3, diversity=0.0) == [0, 1, 2]
    # diversity .5 after a: b = .5*cos20 - .5*cos10 = -0.023, c = .5*cos30 - .5*cos40 = +0.050
    assert mmr(document, vectors, 2, diversity=0.5) == [0, 2]
    assert mmr(document, vectors, 10) == [0, 2, 1]                # k capped at the candidates
    assert mmr(document, vectors, 0) == []
    assert mmr(document, np.zeros((0, 2)), 3) == []


def test_candidates_respect_stopwords_punctuation_and_numbers():
    text = ("The proposed method uses deep neural networks. In 2020, graph, learning and "
            "state-of-the-art T cell x ray analysis of Parkinson's disease improved.")
    found = candidates(text)
    assert "deep neural networks" in found
    assert "state-of-the-art T cell" in found
    assert "Parkinson's disease" in found
    assert "analysis of Parkinson's" in found                   # a stopword inside is fine
    assert not any(phrase.lower().split()[0] in {"the", "proposed", "in", "of"} for phrase in found)
    assert not any(phrase.lower().split()[-1] in {"method", "the", "of", "and"} for phrase in found)
    assert "2020" not in found
    assert "graph learning" not in found                        # the comma breaks the phrase
    assert "networks In" not in found and "deep neural networks In" not in found
    assert not any("x" in phrase.split() for phrase in found)   # one lowercase letter is no word
    assert "T cell" in found                                    # one capital is an acronym


def test_candidates_are_unique_in_order_of_first_appearance_with_first_casing():
    found = candidates("Neural Networks learn. neural network models. Graph.", max_words=2)
    # "neural network" and "network" recur in the second sentence: kept once, first casing
    assert found == ["Neural", "Neural Networks", "Networks", "Networks learn", "learn", "network models",
                     "models", "Graph"]
    assert candidates("") == [] and candidates("the of and, 42.") == []


TEXTS = [
    "Photosynthesis in chloroplasts converts light energy into chemical energy. Chlorophyll "
    "pigments absorb light during photosynthesis, and the Calvin cycle fixes carbon dioxide.",
    "Convolutional neural networks classify images. We train convolutional neural networks on "
    "medical images and compare convolutional neural networks with support vector machines.",
    "Reactive oxygen species were measured by flow cytometry in leukemia cells treated with "
    "histone deacetylase inhibitors; reactive oxygen species rose in leukemia cells.",
]


def test_tfidf_extractor_is_deterministic_and_extracts_from_the_text():
    extractor = TfidfExtractor()
    first, second = extractor.extract(TEXTS, 4), TfidfExtractor().extract(list(TEXTS), 4)
    assert first == second
    for text, phrases in zip(TEXTS, first):
        assert len(phrases) == 4
        assert all(phrase in text for phrase in phrases)
        keys = [normalise(phrase).split() for phrase in phrases]
        for i, inner in enumerate(keys):   # none contained in another
            assert not any(j != i and " ".join(inner) in " ".join(outer) for j, outer in enumerate(keys))
    assert any("convolutional neural network" in normalise(phrase) for phrase in first[1])
    assert any("reactive oxygen" in normalise(phrase) for phrase in first[2])
    ranked = extractor.rank(TEXTS)
    assert len(ranked) == 3 and set(first[0]) <= set(ranked[0])


def test_tfidf_extractor_handles_texts_without_candidates():
    assert TfidfExtractor().extract(["", "the of and."], 3) == [[], []]
    assert TfidfExtractor().extract(["", TEXTS[0]], 2)[0] == []


@pytest.fixture(scope="module")
def minilm():
    return MiniLMExtractor(pool=20)


def test_minilm_extractor_returns_k_phrases_from_the_text(minilm):
    results = minilm.extract(TEXTS + [""], 3, progress=False)
    assert results[-1] == []
    for text, phrases in zip(TEXTS, results[:-1]):
        assert len(phrases) == 3
        assert all(phrase in text for phrase in phrases)


def test_minilm_extractor_prefers_the_topic_to_filler(minilm, monkeypatch):
    text = ("My neighbour visited yesterday. Photosynthesis happens in chloroplasts, where "
            "chlorophyll absorbs sunlight and photosynthesis produces glucose.")
    topical = ("photosynthesis", "chlorophyll", "chloroplast", "glucose", "sunlight")
    [phrases] = minilm.extract([text], 2, progress=False)
    assert any(word in phrases[0].lower() for word in topical)
    # TF-IDF alone ranks "neighbour visited yesterday" second (one text: no IDF to tell them
    # apart); relevance-weighted MMR keeps the filler out. At diversity 0.5 on a text this short
    # MMR does pick it as "the most different" phrase: diversity is a real trade-off.
    assert "neighbour visited yesterday" in TfidfExtractor().rank([text])[0][:2]
    monkeypatch.setattr(minilm, "diversity", 0.2)
    [phrases] = minilm.extract([text], 3, progress=False)
    assert len(phrases) == 3
    assert all(any(word in phrase.lower() for word in topical) for phrase in phrases)


def test_a_line_break_ends_a_phrase():
    from kit.models.extractors import candidates
    found = candidates("title: Knowledge graph completion\nabstract: Graph completion works")
    assert "graph completion abstract" not in [c.lower() for c in found]
    assert "Knowledge graph completion" in found
