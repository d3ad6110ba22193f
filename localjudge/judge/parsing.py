"""Reading a judge's answer. Structured decoding makes JSON the normal case; the paper's bullet format is read too,
for judges that ignore the schema. Anything else is a failure with the raw text kept, never a low score."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

JUDGMENT_SCHEMA = {
    "type": "object",
    "properties": {
        "evaluation": {"type": "string", "maxLength": 1200},
        "justification": {"type": "string", "maxLength": 600},
        "score": {"type": "integer", "enum": [0, 1, 2, 3, 4, 5]},
    },
    "required": ["evaluation", "justification", "score"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ParsedAnswer:
    score: int | None
    evaluation: str | None
    justification: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _failure(reason: str) -> ParsedAnswer:
    return ParsedAnswer(None, None, None, reason)


def _valid_score(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value <= 5:
        return value
    if isinstance(value, float) and value.is_integer() and 0 <= value <= 5:
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[0-5]\s*", value):
        return int(value)
    return None


def parse_answer(text: str) -> ParsedAnswer:
    if not text or not text.strip():
        return _failure("empty answer")
    parsed = _parse_json(text)
    if parsed is not None:
        return parsed
    parsed = _parse_bullets(text)
    if parsed is not None:
        return parsed
    return _failure("answer is neither the JSON object asked for nor '* Evaluation / * Justification / * Score'")


def _parse_json(text: str) -> ParsedAnswer | None:
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", stripped, re.S)
    candidate = fenced.group(1) if fenced else stripped[stripped.find("{"): stripped.rfind("}") + 1]
    if not candidate:
        return None
    try:
        # strict=False: xgrammar can let raw control characters into strings (mlc-ai/xgrammar#800).
        value = json.loads(candidate, strict=False)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    score = _valid_score(value.get("score"))
    if score is None:
        return _failure(f"score {value.get('score')!r} is not an integer from 0 to 5")
    evaluation = value.get("evaluation")
    justification = value.get("justification")
    if not isinstance(evaluation, str) or not isinstance(justification, str):
        return _failure("evaluation or justification missing or not text")
    return ParsedAnswer(score, evaluation.strip(), justification.strip(), None)


_BULLET = r"^\s*[\*\-]?\s*\**\s*{name}\s*\**\s*:\s*\**\s*(.*?)(?=^\s*[\*\-]?\s*\**\s*(?:evaluation|justification|score)\s*\**\s*:|\Z)"


def _bullet(text: str, name: str) -> str | None:
    match = re.search(_BULLET.format(name=name), text, re.I | re.S | re.M)
    if not match:
        return None
    return match.group(1).strip().rstrip(",").strip()


def _parse_bullets(text: str) -> ParsedAnswer | None:
    """The paper's format: '* Evaluation: ..., * Justification: ..., * Score: N'."""
    score_text = _bullet(text, "score")
    if score_text is None:
        return None
    number = re.match(r"\[?\s*([0-9]+(?:\.[0-9]+)?)", score_text)
    score = _valid_score(float(number.group(1))) if number else None
    if score is None:
        return _failure(f"score {score_text[:40]!r} is not an integer from 0 to 5")
    evaluation = _bullet(text, "evaluation")
    justification = _bullet(text, "justification")
    if not evaluation or not justification:
        return _failure("evaluation or justification missing")
    return ParsedAnswer(score, evaluation, justification, None)
