"""Strict answer parsing: a generated answer counts only if it is exactly one label word."""


def parse_answer(text, words, separator=None):
    """Index of the label word that text is, after trimming whitespace; else None. With a
    rationale separator, the answer is what comes before it (the rationale after it is free text,
    and a short label word leaves room for some of it within the generated tokens).

    Nothing fuzzy: "1." or "yes, it is" is not an answer, it is a fallback (counted and
    reported), because a lenient parser silently turns noise into labels.
    """
    answer = (text.split(separator, 1)[0] if separator else text).strip()
    matches = [i for i, word in enumerate(words) if answer == word.strip()]
    return matches[0] if len(matches) == 1 else None
