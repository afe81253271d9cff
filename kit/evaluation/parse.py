"""Strict answer parsing: a generated answer counts only if it is exactly one label word."""


def parse_answer(text, words):
    """Index of the label word that text is, after trimming whitespace; else None.

    Nothing fuzzy: "1." or "yes, it is" is not an answer, it is a fallback (counted and
    reported), because a lenient parser silently turns noise into labels.
    """
    answer = text.strip()
    matches = [i for i, word in enumerate(words) if answer == word.strip()]
    return matches[0] if len(matches) == 1 else None
