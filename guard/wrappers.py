"""Models made safe to deploy by wrapping them once.

- :class:`GuardedGenerator` (text -> audio): every output is watermarked with the Guard's
  keyed mark, read back, judged by the generator policy and written to the audit log; what
  the policy blocks never leaves.
- :class:`GuardedTagger` (audio -> labels): every input is screened, and the synthetic-voice
  score, the watermarks found and the decision join the model's labels.
- :class:`GuardedAudioLLM` (audio + question -> text): every input is screened first; the
  policy may refuse (the model is then not called at all) or make the answer open with a
  disclosure that the voice is likely synthetic.

Each takes a plain callable (outputs normalised by :mod:`guard.adapters`) or, through
``from_pipeline`` / ``from_transformers``, a Hugging Face model; :func:`guard_pipeline` picks
the wrapper from a pipeline's task. All decisions are the Guard's, so a wrapped model, the
CLI and the HTTP service decide the same way on the same audio.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import torch

from guard.adapters import (
    Answer,
    Generate,
    Label,
    PipelineGenerator,
    PipelineTagger,
    Tag,
    TransformersAudioLLM,
    as_labels,
    as_text,
    as_waveform,
    model_name,
    pipeline_task,
)
from guard.guard import Guard, Verdict
from watermark import coding
from watermark.types import WatermarkError

GUARD_SOURCE = "audioguard"
DISCLOSURE = "Note: the voice in this recording is likely synthetic ({message})."
REFUSAL = "I can't answer questions about this recording: {message}."


class GuardBlocked(Exception):
    """The policy blocked an input or an output; ``decision`` is the policy's decision as
    ``policies.Decision.to_dict()`` gives it: action, matched rules, message, policy, trace."""

    def __init__(self, what: str, decision: dict[str, Any]) -> None:
        self.decision = decision
        policy = decision.get("policy") or {}
        rules = ", ".join(decision.get("matched_rules") or []) or "its default"
        super().__init__(
            f"{what} was blocked by policy {policy.get('name')} v{policy.get('version')} "
            f"({rules}): {decision.get('message', '')}"
        )


@dataclass(frozen=True)
class GeneratedAudio:
    """One generator output: the audio to release and what the generator policy made of it.

    ``audio`` is the marked audio when the mark verified, otherwise the generator's own output
    (released only because the policy did not block it; ``decision`` says so).
    ``verification`` is the keyed detector's read-back after embedding, or the reason
    embedding failed.
    """

    audio: torch.Tensor
    sample_rate: int
    decision: dict[str, Any]
    verification: dict[str, Any] | None
    verified: bool

    @property
    def action(self) -> str:
        return str(self.decision["action"])


@dataclass(frozen=True)
class TaggedAudio:
    """The model's labels followed by audioguard's, and the screening verdict they came from."""

    labels: list[Label]
    verdict: Verdict

    def to_list(self) -> list[dict[str, Any]]:
        """The labels in the ``[{"label", "score", "source"}]`` shape of an HF pipeline."""
        return [label.to_dict() for label in self.labels]


@dataclass(frozen=True)
class GuardedAnswer:
    """What to show the user: the answer (opened by a disclosure when ``disclosed``), or the
    refusal when ``answered`` is false; ``verdict`` is the screening of the audio."""

    text: str
    answered: bool
    disclosed: bool
    verdict: Verdict


class GuardedGenerator:
    """Text to audio, where every output carries a verified keyed mark or is blocked.

    ``payload`` (up to 8 hex digits) is embedded in every output; ``key_id`` names one of the
    Guard's keys (the key file's stem) and may be left out when the Guard holds exactly one.
    Actions in ``block_on`` raise :class:`GuardBlocked` and release nothing.
    """

    def __init__(
        self,
        generate: Generate,
        guard: Guard,
        payload: str,
        key_id: str | None = None,
        block_on: Collection[str] = ("block",),
    ) -> None:
        _check_key(guard, key_id)
        try:
            coding.encode(payload)
        except ValueError as exc:
            raise WatermarkError(str(exc)) from None
        self.generate = generate
        self.guard = guard
        self.payload = payload
        self.key_id = key_id
        self.block_on = frozenset(block_on)
        self.name = model_name(generate)

    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        guard: Guard,
        payload: str,
        key_id: str | None = None,
        block_on: Collection[str] = ("block",),
        **forward_params: Any,
    ) -> GuardedGenerator:
        """A ``transformers`` text-to-speech / text-to-audio pipeline, guarded."""
        return cls(PipelineGenerator(pipe, **forward_params), guard, payload, key_id, block_on)

    def __call__(
        self, text: str, meta: dict[str, Any] | None = None, **kwargs: Any
    ) -> GeneratedAudio:
        audio, rate = as_waveform(self.generate(text, **kwargs))
        facts_meta = {"generator": self.name, **(meta or {})}
        result = self.guard.protect(audio, rate, self.payload, key_id=self.key_id, meta=facts_meta)
        if result.decision["action"] in self.block_on:
            raise GuardBlocked("generated audio", result.decision)
        return GeneratedAudio(
            result.audio, rate, result.decision, result.detection, result.verified
        )


class GuardedTagger:
    """Audio to labels, with the input screened and audioguard's findings among the labels.

    audioguard's labels (``source="audioguard"``) are ``audioguard/synthetic-voice`` scored
    with the detector's probability (absent without a detector or without sound to judge),
    ``audioguard/watermark/<backend>[/<key id>]`` for each mark found, scored ``1 - p``, and
    ``audioguard/decision/<action>`` with score 1.
    """

    def __init__(self, tag: Tag, guard: Guard) -> None:
        self.tag = tag
        self.guard = guard

    @classmethod
    def from_pipeline(cls, pipe: Any, guard: Guard, top_k: int | None = None) -> GuardedTagger:
        """A ``transformers`` audio-classification pipeline, guarded."""
        return cls(PipelineTagger(pipe, top_k=top_k), guard)

    def __call__(
        self, audio: torch.Tensor, sample_rate: int, meta: dict[str, Any] | None = None
    ) -> TaggedAudio:
        verdict = self.guard.screen(audio, sample_rate, meta)
        labels = as_labels(self.tag(audio, sample_rate))
        return TaggedAudio([*labels, *guard_labels(verdict)], verdict)


def guard_labels(verdict: Verdict) -> list[Label]:
    """A verdict as labels: the synthetic-voice score, each mark found, and the decision."""
    labels = []
    if verdict.synthetic_probability is not None:
        labels.append(
            Label("audioguard/synthetic-voice", verdict.synthetic_probability, GUARD_SOURCE)
        )
    for mark in verdict.watermarks:
        if mark.get("detected"):
            name = "/".join(["audioguard/watermark", mark["backend"], mark.get("key_id", "")])
            p_value = mark.get("p_value")
            score = 1.0 if p_value is None else 1.0 - float(p_value)
            labels.append(Label(name.rstrip("/"), score, GUARD_SOURCE))
    labels.append(Label(f"audioguard/decision/{verdict.decision}", 1.0, GUARD_SOURCE))
    return labels


class GuardedAudioLLM:
    """Audio and a question to text, answered only for audio the policy lets through.

    A decision in ``block_on`` refuses: the model is not called, and the answer is the
    ``refusal`` text (``on_block="refuse"``) or :class:`GuardBlocked` is raised
    (``on_block="raise"``). A decision in ``disclose_on``, or a matched rule whose id is in
    ``disclose_rules`` (for policies that allow but want disclosure), opens the answer with
    ``disclosure``. Both texts may use ``{message}`` (the policy's message) and ``{rules}``.
    """

    def __init__(
        self,
        answer: Answer,
        guard: Guard,
        on_block: Literal["refuse", "raise"] = "refuse",
        block_on: Collection[str] = ("block",),
        disclose_on: Collection[str] = ("label",),
        disclose_rules: Collection[str] = (),
        disclosure: str = DISCLOSURE,
        refusal: str = REFUSAL,
    ) -> None:
        if on_block not in ("refuse", "raise"):
            raise ValueError(f"on_block must be 'refuse' or 'raise', not {on_block!r}")
        self.answer = answer
        self.guard = guard
        self.on_block = on_block
        self.block_on = frozenset(block_on)
        self.disclose_on = frozenset(disclose_on)
        self.disclose_rules = frozenset(disclose_rules)
        self.disclosure = disclosure
        self.refusal = refusal

    @classmethod
    def from_transformers(
        cls,
        model: Any,
        processor: Any,
        guard: Guard,
        max_new_tokens: int = 256,
        **options: Any,
    ) -> GuardedAudioLLM:
        """A ``transformers`` audio LLM (Qwen2-Audio style model + processor), guarded."""
        return cls(TransformersAudioLLM(model, processor, max_new_tokens), guard, **options)

    def __call__(
        self,
        audio: torch.Tensor,
        sample_rate: int,
        question: str,
        meta: dict[str, Any] | None = None,
    ) -> GuardedAnswer:
        verdict = self.guard.screen(audio, sample_rate, meta)
        fill = {"message": verdict.message, "rules": ", ".join(verdict.matched_rules)}
        if verdict.decision in self.block_on:
            if self.on_block == "raise":
                raise GuardBlocked("the audio", decision_of(verdict))
            return GuardedAnswer(self.refusal.format(**fill), False, False, verdict)
        text = as_text(self.answer(audio, sample_rate, question))
        disclose = verdict.decision in self.disclose_on or bool(
            self.disclose_rules.intersection(verdict.matched_rules)
        )
        if disclose:
            text = f"{self.disclosure.format(**fill)}\n\n{text}"
        return GuardedAnswer(text, True, disclose, verdict)


def guard_pipeline(pipe: Any, guard: Guard, **options: Any) -> GuardedGenerator | GuardedTagger:
    """One line for a ``transformers`` pipeline: the wrapper its task calls for.

    ``options`` go to that wrapper's ``from_pipeline`` (a generator needs ``payload``).
    """
    task = pipeline_task(pipe)
    if task == "text-to-audio":
        return GuardedGenerator.from_pipeline(pipe, guard, **options)
    if task == "audio-classification":
        return GuardedTagger.from_pipeline(pipe, guard, **options)
    raise ValueError(
        f"no guarded wrapper for a {task!r} pipeline; audio LLMs are wrapped with "
        "GuardedAudioLLM.from_transformers(model, processor, guard)"
    )


def decision_of(verdict: Verdict) -> dict[str, Any]:
    """A screening verdict's decision in the shape of ``policies.Decision.to_dict()``."""
    return {
        "action": verdict.decision,
        "matched_rules": list(verdict.matched_rules),
        "message": verdict.message,
        "policy": dict(verdict.policy),
        "trace": list(verdict.trace),
    }


def _check_key(guard: Guard, key_id: str | None) -> None:
    """Fail at deployment, not on the first request, when the mark cannot be made."""
    keys = guard.key_ids
    if not keys:
        raise WatermarkError(
            "a guarded generator needs a Guard with a watermark key (GuardConfig(keys=...))"
        )
    if key_id is None and len(keys) > 1:
        raise WatermarkError(f"the Guard holds several keys ({', '.join(keys)}); name a key_id")
    if key_id is not None and key_id not in keys:
        raise WatermarkError(f"no watermark key {key_id!r} is loaded (loaded: {', '.join(keys)})")
