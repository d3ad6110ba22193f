"""What the judge is asked. Our own wording around the paper's 0-5 rubric (its appendix A.2), one text per image
mode. A prompt is stored by the hash of its template, so a changed prompt is a new judgment, never a silent edit.

A template names the CAM method in use ("a Grad-CAM++ saliency map"), and where the label list describes its classes
it carries those descriptions (hashed and stored with it). The kind of image ("a photo", "a chest radiograph (CR)")
is a field filled for each image: the judgment records it."""

from __future__ import annotations

import hashlib
import json

MASKED_PROMPT = """You are auditing an image classifier. It predicted the class "{label}" for {a_kind}.
You see that {kind} with everything the classifier did not attend to blacked out: only the regions it relied on
(by <A_METHOD> saliency map) remain visible.

Judge whether the visible regions show a "{label}" and how well they cover it:
- Focus: is the visible region on the object, or scattered over other areas?
- Recognition: can the object be recognised from what is visible alone?
- Coverage: is all of the object visible, most of it, a small part, or none?
- Distraction: is much of what is visible background or other objects?
- Why: what might have drawn the model's attention (similar shapes or colours, context, clutter)?

Score the attention from 0 to 5:
0 - the visible region has nothing to do with the object; the attention is irrelevant.
1 - the object is not recognisable; the visible regions are elsewhere.
2 - only a small part of the object is visible.
3 - the object is recognisable, but much of what is visible is background or other objects.
4 - most of the object is visible, with little background or other objects.
5 - the whole object is visible and almost nothing else.

Answer as JSON with three keys: "evaluation" (4-6 sentences on where the attention is and whether it
matches the object), "justification" (one or two sentences explaining the score) and "score" (an integer 0-5)."""

HEATMAP_PROMPT = """You are auditing an image classifier. It predicted the class "{label}" for {a_kind}.
You see the {kind} with <A_METHOD> heatmap drawn over it: warm colours (red, orange, yellow) mark where the
classifier looked most, cool colours (blue, purple) where it paid little or no attention.

Judge whether the warm regions lie on a "{label}" and how well they cover it:
- Focus: are the warm colours on the object, or scattered over other areas?
- Recognition: is the attention mainly on the right object?
- Coverage: do the warm colours cover all of the object, most of it, a small part, or none?
- Distraction: are there warm colours on background or other objects?
- Why: what might have drawn the model's attention (similar shapes or colours, context, clutter)?

Score the attention from 0 to 5:
0 - the warm regions are scattered with no clear target.
1 - the warm regions are on something unrelated to the object.
2 - only a small part of the object is warm; most attention is misdirected.
3 - part of the object is warm, but so are irrelevant areas around it.
4 - the warm regions are mostly on the object, with minor attention elsewhere.
5 - the warm regions cover the whole object and nothing else.

Answer as JSON with three keys: "evaluation" (4-6 sentences on where the attention is and whether it
matches the object), "justification" (one or two sentences explaining the score) and "score" (an integer 0-5)."""

PROMPTS = {"masked": MASKED_PROMPT, "heatmap": HEATMAP_PROMPT}

# The paper's Table 3 compares prompt styles. "concise" keeps only the task and the rubric; "extended" adds a
# step-by-step procedure before the rubric. Both keep the same 0-5 scale and the same answer format, so their scores
# are comparable with the original's.
_VIEW = {"masked": "the {kind} with everything the classifier did not attend to blacked out",
         "heatmap": "the {kind} with <A_METHOD> heatmap over it (warm colours: where the classifier looked)"}
_ANSWER = ('Answer as JSON with three keys: "evaluation" (4-6 sentences on where the attention is and whether it\n'
           'matches the object), "justification" (one or two sentences explaining the score) and "score" (an integer '
           '0-5).')


def _rubric(template: str) -> str:
    start = template.index("Score the attention from 0 to 5:")
    return template[start:template.index("Answer as JSON")].strip()


def _concise(mode: str) -> str:
    return (f'A classifier predicted "{{label}}". You see {_VIEW[mode]}. Does the attended region show a '
            f'"{{label}}", and how much of it?\n\n{_rubric(PROMPTS[mode])}\n\n{_ANSWER}')


def _extended(mode: str) -> str:
    original = PROMPTS[mode]
    steps = ("Work in this order before you score:\n"
             "1. Describe what is visible, region by region, without assuming the class.\n"
             '2. Name the parts of a typical "{label}" (for an animal: head, body, legs; for an object: its '
             "characteristic parts) and say which of them are visible.\n"
             "3. Estimate how much of what is visible is the object and how much is background or other objects.\n"
             "4. Only then choose the score from the rubric.\n\n")
    at = original.index("Score the attention from 0 to 5:")
    return original[:at] + steps + original[at:]


PROMPT_STYLES = ("original", "concise", "extended")


PHOTO = "photo"  # the image kind unless the file says (DICOM) or the run names one (--image-kind)


def with_article(words: str) -> str:
    """ "a photo", "an MR image", "an XGrad-CAM": the article by the sound of the first letter (an initialism
    spoken letter by letter: "an MR")."""
    first = words[:1]
    spelled = len(words) > 1 and first in "FHLMNRSX" and (words[1].isupper() or words[1] == "-") and \
        not words[:2] == "US"  # "a US image" is rare; "an US" is wrong either way
    return ("an " if first.lower() in "aeiou" or spelled else "a ") + words


def prompt_template(image_mode: str, style: str = "original", method: str = "Grad-CAM",
                    described: bool = False) -> str:
    """The template of one image mode and style, naming the CAM method (its title, e.g. "Grad-CAM++"); fields:
    {label}, {kind} and {a_kind} (the image kind), and with `described` (the labels describe their classes)
    {description}, a line after the first that says what the class looks like."""
    if image_mode not in PROMPTS:
        raise ValueError(f"unknown image mode {image_mode!r}; use one of {', '.join(PROMPTS)}")
    if style == "original":
        template = PROMPTS[image_mode]
    elif style == "concise":
        template = _concise(image_mode)
    elif style == "extended":
        template = _extended(image_mode)
    else:
        raise ValueError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")
    template = template.replace("<A_METHOD>", with_article(method))
    if described:
        line_end = template.index("\n")
        template = template[:line_end] + "{description}" + template[line_end:]
    return template


def fill_kind(template: str, kind: str) -> str:
    """The template with its image kind given once for every image (--image-kind)."""
    escaped = kind.replace("{", "{{").replace("}", "}}")
    return template.replace("{a_kind}", with_article(escaped)).replace("{kind}", escaped)


def prompt_text(template: str, descriptions: dict[str, str] | None = None) -> str:
    """What a prompt is stored and hashed as: its template, and the class descriptions it fills in, if any."""
    if not descriptions:
        return template
    return template + DESCRIPTIONS_HEADER + json.dumps(descriptions, sort_keys=True, ensure_ascii=False)


DESCRIPTIONS_HEADER = "\n\n[class descriptions] "


def split_prompt_text(text: str) -> tuple[str, dict[str, str]]:
    """The inverse of `prompt_text`: a stored prompt's template and its class descriptions."""
    template, found, descriptions = text.partition(DESCRIPTIONS_HEADER)
    return template, (json.loads(descriptions) if found else {})


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render(template: str, label: str, kind: str = PHOTO, description: str = "") -> str:
    shown = label.replace("_", " ")
    line = f'\n"{shown}" means: {description.rstrip(".")}.' if description else ""
    return template.format(label=shown, kind=kind, a_kind=with_article(kind), description=line)
