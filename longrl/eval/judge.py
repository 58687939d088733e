"""An LLM judge for open-ended answers: asks a chat model (`longrl.llm`, e.g. the `openai` backend) whether a
predicted answer means the same as the gold one, and reads a yes / no out of its reply.

    judge = make_judge(JudgeConfig("openai", model="qwen2.5-72b", base_url="http://host:8000/v1"))
    verdicts = judge.judge_many([(question, gold, predicted), ...])   # [Verdict(correct, reply), ...]

The prompt follows the Video-ChatGPT / ActivityNet-QA protocol in spirit (question, correct answer,
predicted answer; meaning over wording) but asks for one word, so any chat model can answer. Replies are
read robustly: a leading yes / no (any case, punctuation, markdown), correct / incorrect, true / false, a
JSON object with a "pred" (Video-ChatGPT's format), "verdict", "answer" or "correct" field, and reasoning
in <think> tags is skipped. A reply with neither verdict counts as "no" (the reply is kept in the record).
A response without an answer is not sent: it is wrong. A request that still fails after the backend's
retries raises BackendRequestError (the run stops; what was written so far resumes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from longrl.errors import ConfigError

JUDGE_SYSTEM = (
    "You evaluate answers to questions about videos. Compare the predicted answer with the correct answer "
    "and decide whether they mean the same thing. Focus on meaning, not wording: synonyms and paraphrases "
    "count as correct; a different, missing or contradictory fact does not."
)
JUDGE_TEMPLATE = (
    "Question: {question}\n"
    "Correct answer: {gold}\n"
    "Predicted answer: {predicted}\n\n"
    "Is the predicted answer correct? Reply with exactly one word: yes or no."
)

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")
_YES = {"yes", "correct", "true", "y"}
_NO = {"no", "incorrect", "false", "wrong", "n"}


@dataclass(frozen=True)
class JudgeConfig:
    """Which chat model judges: `backend` a `longrl.llm.BACKEND_KINDS` name, `model` its model name (or
    folder for "hf"), base_url / api_key_env for "openai"; `workers` requests in flight at once."""

    backend: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    workers: int = 8
    max_tokens: int = 16

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"


@dataclass(frozen=True)
class Verdict:
    """The judge's decision and its raw reply ("" when the response had no answer to judge)."""

    correct: bool
    reply: str


def parse_verdict(reply: str) -> bool:
    """True for a reply that says yes (rules in the module docstring), False otherwise."""
    text = _THINK.sub(" ", reply).strip()
    start = text.find("{")
    if start >= 0:
        try:
            payload = json.loads(text[start : text.rfind("}") + 1])
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            for key in ("pred", "verdict", "answer", "correct", "judgement", "judgment"):
                if key in payload:
                    value = payload[key]
                    return value is True or (isinstance(value, str) and _first_verdict(value) is True)
    verdict = _first_verdict(text)
    return verdict is True


def _first_verdict(text: str) -> bool | None:
    """True / False for the first yes-like or no-like word of `text`, None when there is none."""
    for word in _WORD.findall(text.casefold()):
        if word in _YES:
            return True
        if word in _NO:
            return False
    return None


class LLMJudge:
    """Judges open-ended answers with a chat backend (`longrl.llm.ChatBackend`)."""

    def __init__(self, backend, *, workers: int = 8, max_tokens: int = 16, name: str | None = None) -> None:
        self.backend = backend
        self.workers = max(1, workers)
        self.max_tokens = max_tokens
        self.name = name or getattr(backend, "name", "judge")

    def judge(self, question: str, gold: str, predicted: str | None) -> Verdict:
        """One verdict (a request to the backend unless `predicted` is empty)."""
        from longrl.llm import system_message, user_message

        if predicted is None or not predicted.strip():
            return Verdict(False, "")
        prompt = JUDGE_TEMPLATE.format(
            question=question.strip(), gold=gold.strip(), predicted=predicted.strip()
        )
        reply = self.backend.chat(
            [system_message(JUDGE_SYSTEM), user_message(prompt)],
            max_tokens=self.max_tokens,
            temperature=0.0,
            seed=0,
        )
        return Verdict(parse_verdict(reply), reply)

    def judge_many(self, triples: Sequence[tuple[str, str, str | None]]) -> list[Verdict]:
        """Verdicts for (question, gold, predicted) triples, in order, `workers` requests at a time."""
        if len(triples) <= 1 or self.workers == 1:
            return [self.judge(*t) for t in triples]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(triples))) as pool:
            return list(pool.map(lambda t: self.judge(*t), triples))

    def close(self) -> None:
        self.backend.close()


def make_judge(config: JudgeConfig) -> LLMJudge:
    """Build the judge's backend (BackendConfigError for a bad backend, URL or missing key variable)."""
    from longrl.llm import make_backend

    if config.workers < 1 or config.max_tokens < 1:
        raise ConfigError("--judge-workers and the judge's max_tokens must be >= 1")
    backend = make_backend(
        config.backend, model=config.model, base_url=config.base_url, api_key_env=config.api_key_env
    )
    return LLMJudge(backend, workers=config.workers, max_tokens=config.max_tokens, name=config.name)
