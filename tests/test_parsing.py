from __future__ import annotations

import pytest

from localjudge.judge import parse_answer

PAPER_FORMAT = """* Evaluation: The visible region shows the head and neck of a horse; the background is dark.
The legs are mostly hidden,
* Justification: Most of the object is visible with little background,
* Score: 4"""


def test_json_answer():
    parsed = parse_answer('{"evaluation": "Head visible.", "justification": "Most of it.", "score": 4}')
    assert parsed.ok and parsed.score == 4 and parsed.evaluation == "Head visible."


def test_json_with_control_characters_from_constrained_decoding():
    parsed = parse_answer('{"evaluation": "a\x0bb", "justification": "c\td", "score": 0}')
    assert parsed.ok and parsed.score == 0


def test_fenced_json_with_prose_around_it():
    parsed = parse_answer('Here you go:\n```json\n{"evaluation": "e", "justification": "j", "score": "3"}\n```')
    assert parsed.ok and parsed.score == 3


def test_paper_bullet_format():
    parsed = parse_answer(PAPER_FORMAT)
    assert parsed.ok and parsed.score == 4
    assert parsed.evaluation.startswith("The visible region") and "legs are mostly hidden" in parsed.evaluation
    assert parsed.justification == "Most of the object is visible with little background"


def test_paper_format_with_bold_markers_and_brackets():
    parsed = parse_answer("**Evaluation:** fine\n**Justification:** ok\n**Score:** [5]")
    assert parsed.ok and parsed.score == 5


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ('{"evaluation": "e", "justification": "j", "score": 7}', "not an integer from 0 to 5"),
    ('{"evaluation": "e", "justification": "j", "score": 2.5}', "not an integer from 0 to 5"),
    ('{"evaluation": "e", "justification": "j", "score": true}', "not an integer from 0 to 5"),
    ('{"evaluation": "e", "score": 2}', "missing"),
    ('{"evaluation": "cut off', "neither"),
    ("I think it is a 4 out of 5.", "neither"),  # the first digit in free text is not a score
    ("* Evaluation: x\n* Justification: y\n* Score: high", "not an integer"),
])
def test_unreadable_answers_are_failures_not_low_scores(text, reason):
    parsed = parse_answer(text)
    assert not parsed.ok and parsed.score is None and reason in parsed.error
