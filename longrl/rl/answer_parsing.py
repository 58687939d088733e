"""Reading answers out of model responses: the one parser shared by RL rewards and eval scoring.

- `is_well_formed(response)`: exactly `<think>..</think><answer>..</answer>` (whitespace around allowed),
  both parts non-empty, no tag inside either part.
- `extract_answer(response)`: the text inside the answer tags (None when there is no usable answer).
- `parse_choice(answer, options)`: the option letter an answer names, or None when it names none or several.
- `match_open_ended(answer, gold)`: numeric match within a tolerance, or normalized exact match.

The tag split itself is `longrl.models.prompt.parse_response` (the format's single definition: repeated or
nested tags are not well formed; the answer of a broken format is its last answer block); this module adds
what a reward needs on top (non-empty parts, letter and open-ended matching).

Letter rules (`parse_choice`), applied to the NFKC-normalized answer with zero-width characters removed and
wrapping quotes / markdown emphasis stripped; only letters of existing options count (A..Z without options):
1. The whole answer is a letter form: `B`, `b`, `(B)`, `[B]`, `B.`, `B)`, `B:`.
2. It starts with a labelled letter: `B. text`, `(B) text`, `B: text`, `b) text` -> B, unless the text is
   exactly (normalized) another option's text: a contradiction -> None.
3. It is exactly one option's text (normalized): that option's letter.
Rules 1-3 are also tried after removing a leading cue: `Answer: B`, `The answer is (B) text`,
`the correct option is: red car`.
4. Otherwise every letter mention counts: uppercase letters standing alone (not inside a word: `Because`
   is no B; not `I'm`), any-case letters in parentheses `(b)` or right after a cue (`answer is b`, `option
   C`; a lowercase letter after a cue only when nothing word-like follows it, so `the answer is a dog` is
   not A). `A` and `I` followed by a lowercase word are read as the article / pronoun (`A dog runs`,
   `I think`), except before `is`, `was`, `and`, `or`. Exactly one distinct letter -> it; several
   (`A or B`, `B, not C`) -> None.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Sequence
from fractions import Fraction

from longrl.models.prompt import parse_response
from longrl.models.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, IM_END, THINK_CLOSE, THINK_OPEN

_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def _has_tag(text: str) -> bool:
    return any(tag in text for tag in _TAGS)


def is_well_formed(response: str) -> bool:
    """True when the response is `<think>T</think><answer>A</answer>` and nothing else but whitespace.

    T and A must be non-empty (after stripping) and contain none of the four tags. `<|im_end|>` is ignored
    (parse_response removes it).
    """
    parsed = parse_response(response)  # a well-formed parse never has a tag inside either part
    return bool(parsed.well_formed and parsed.think and parsed.answer)


def extract_answer(response: str, *, require_tag: bool = True) -> str | None:
    """The stripped text of the response's last `<answer>..</answer>` block (None when there is none).

    Several answer blocks: the last one counts (`parse_response`'s rule for broken formats). None when the
    answer is empty or nested (`<answer><answer>B</answer></answer>`: ambiguous).
    require_tag=False falls back, when there is no answer tag at all, to the text after the last
    `</think>` (or the whole response): for scoring models that do not use the tags.
    """
    answer = parse_response(response).answer
    if answer is None and not require_tag:
        text = response.rsplit(THINK_CLOSE, 1)[-1]
        answer = None if _has_tag(text) else text.replace(IM_END, "").strip()
    return answer or None


# ---------------------------------------------------------------------------------------------- text utils

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _clean(text: str) -> str:
    """NFKC (full-width letters, odd spaces), zero-width / format characters removed, stripped."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def normalize_text(text: str) -> str:
    """Lowercase, punctuation deleted, articles (a, an, the) removed, whitespace collapsed (SQuAD style).

    Punctuation is deleted, not replaced by a space: "U.S." == "US", but "well-known" != "well known".
    """
    text = _clean(text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
# Signed decimal with optional thousands separators and exponent, or a fraction "3/4". Not glued to a
# preceding letter/digit ("mp4" has no number); a trailing unit is allowed ("5s", "12%", "3rd").
_NUMBER = re.compile(
    r"(?<![\w.])([-+]?)(?:(\d+)\s*/\s*(\d+)|((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)"
)


def parse_number(text: str) -> float | None:
    """The number an answer states, or None when it states none or several.

    "42", "-3.5", "1,000", "1e3", "3/4", "12%" (-> 12), "5 seconds" (-> 5), "twelve" (a whole answer that is
    one number word, zero..twenty). "3 or 4", "3:45" -> None (two numbers).
    """
    text = _clean(text)
    matches = list(_NUMBER.finditer(text))
    if not matches:
        word = normalize_text(text)
        return float(_NUMBER_WORDS[word]) if word in _NUMBER_WORDS else None
    if len(matches) > 1:
        return None
    m = matches[0]
    sign = -1.0 if m.group(1) == "-" else 1.0
    if m.group(2) is not None:
        if int(m.group(3)) == 0:
            return None
        return sign * float(Fraction(int(m.group(2)), int(m.group(3))))
    return sign * float(m.group(0).lstrip("+-").replace(",", ""))


def match_open_ended(answer: str | None, gold: str, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """Does a free-form answer match the gold answer?

    When both state one number (`parse_number`): |answer - gold| <= max(rel_tol * max(|answer|, |gold|),
    abs_tol). Otherwise: `normalize_text` makes them equal (and non-empty).
    """
    if answer is None:
        return False
    gold_num, value = parse_number(gold), parse_number(answer)
    if gold_num is not None and value is not None:
        # Numbers decide when both sides state one: text normalization would equate "-2" and "2".
        return math.isclose(value, gold_num, rel_tol=rel_tol, abs_tol=abs_tol)
    norm = normalize_text(answer)
    return bool(norm) and norm == normalize_text(gold)


# ------------------------------------------------------------------------------------------ letter choices

_WRAP_CHARS = "*_`\"'“”‘’ \t\r\n"
_LABEL = r"(?:\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Za-z])[.:)])"
_BARE = re.compile(rf"(?:{_LABEL}|([A-Za-z]))\.?", re.DOTALL)
_LABELLED = re.compile(rf"{_LABEL}\s+(\S.*)", re.DOTALL)
_CUE_WORDS = r"(?:answer|option|choice)"
_CUE_PREFIX = re.compile(
    rf"^(?:(?:the|my)\s+)?(?:(?:final|correct|best|right)\s+)?{_CUE_WORDS}\b"
    r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_CUE_LETTER = re.compile(
    rf"\b{_CUE_WORDS}\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-]?\s*"
    r"(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])(?!\w))",
    re.IGNORECASE,
)
_ENDS_HERE = re.compile(r"\s*(?:[.,;!?)]|$)")
_PAREN_LETTER = re.compile(r"\(\s*([A-Za-z])\s*\)")
_UPPER_LETTER = re.compile(r"(?<!\w)([A-Z])(?!\w|['’]\w)")
_ARTICLE_NEXT = re.compile(r"\s+(?!(?:is|was|and|or)\b)[a-z]")
_OPTION_LABEL = re.compile(rf"^{_LABEL}\s*")


def _first(m: re.Match, groups: Sequence[int]) -> str:
    return next(m.group(g) for g in groups if m.group(g) is not None)


def option_text(option: str) -> str:
    """An option without a leading 'A. ' / '(A) ' / 'A: ' label, normalized for matching."""
    return normalize_text(_OPTION_LABEL.sub("", _clean(option), count=1))


def _letters(options: Sequence[str] | None) -> str:
    n = 26 if options is None else len(options)
    return string.ascii_uppercase[:n]


def _by_text(text: str, options: Sequence[str] | None) -> list[str]:
    """Letters of the options whose normalized text equals the normalized `text`."""
    norm = normalize_text(text)
    if not options or not norm:
        return []
    return [
        letter for letter, opt in zip(_letters(options), options, strict=False) if option_text(opt) == norm
    ]


def _strict_forms(text: str, options: Sequence[str] | None, valid: str) -> tuple[bool, str | None]:
    """Rules 1-3 on `text`: (decided, letter). decided=False means these rules do not apply."""
    m = _BARE.fullmatch(text)
    if m:
        letter = _first(m, (1, 2, 3, 4)).upper()
        return True, letter if letter in valid else None
    m = _LABELLED.match(text)
    if m and _first(m, (1, 2, 3)).upper() in valid:
        letter = _first(m, (1, 2, 3)).upper()
        others = [x for x in _by_text(m.group(4), options) if x != letter]
        return True, None if others else letter
    named = _by_text(text, options)
    if named:
        return True, named[0] if len(named) == 1 else None
    return False, None


def _cue_letters(text: str) -> set[str]:
    found = set()
    for m in _CUE_LETTER.finditer(text):
        paren, bare = m.group(1), m.group(2)
        if paren:
            found.add(paren.upper())
        elif bare.isupper() or _ENDS_HERE.match(text, m.end()):
            # A lowercase letter after a cue counts only when nothing word-like follows ("answer is a dog").
            found.add(bare.upper())
    return found


def _mentioned_letters(text: str) -> set[str]:
    found = _cue_letters(text) | {m.group(1).upper() for m in _PAREN_LETTER.finditer(text)}
    for m in _UPPER_LETTER.finditer(text):
        letter = m.group(1)
        if letter in "AI" and _ARTICLE_NEXT.match(text, m.end()):
            continue
        found.add(letter)
    return found


def parse_choice(answer: str | None, options: Sequence[str] | None = None) -> str | None:
    """The uppercase letter of the option `answer` names, or None (no letter, several, not an option).

    answer: extracted answer text (see `extract_answer`). options: the option texts in order (A, B, ...;
    a leading 'A. ' label in them is ignored); None allows any letter A..Z and disables text matching.
    Rules in the module docstring.
    """
    if answer is None:
        return None
    text = _clean(answer).strip(_WRAP_CHARS)
    if not text:
        return None
    valid = _letters(options)
    decided, letter = _strict_forms(text, options, valid)
    if decided:
        return letter
    cue = _CUE_PREFIX.match(text)
    if cue and cue.end() < len(text):
        decided, letter = _strict_forms(text[cue.end() :].strip(_WRAP_CHARS), options, valid)
        if decided:
            return letter
    found = {x for x in _mentioned_letters(text) if x in valid}
    return found.pop() if len(found) == 1 else None
