import pytest

from kit.evaluation.parse import parse_answer

WORDS = ["0", "1"]


@pytest.mark.parametrize("text, expected", [
    ("1", 1), ("0", 0), (" 1\n", 1), ("\t0 ", 0),           # exact label after trimming
    ("1.", None), ("yes", None), ("10", None), ("", None),   # anything else is not an answer
    ("1 0", None), ("The answer is 1", None), ("０", None),
])
def test_strict_digits(text, expected):
    assert parse_answer(text, WORDS) == expected


def test_words_are_matched_whole_and_case_sensitively():
    words = ["ordinary", "disaster"]
    assert parse_answer("disaster", words) == 1
    assert parse_answer("Disaster", words) is None
    assert parse_answer("disasters", words) is None


@pytest.mark.parametrize("text, expected", [
    ("no\nbecause it says so", 1),        # a short word leaves room for the rationale's first tokens
    ("yes\n", 0), ("yes", 0),              # the separator, or the generation cut before it
    ("yes, because\nso", None), ("\nyes", None), ("nope\nno", None),
])
def test_with_a_rationale_the_answer_is_the_text_before_the_separator(text, expected):
    assert parse_answer(text, ["yes", "no"], "\n") == expected
