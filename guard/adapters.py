"""Adapters: any generator, tagger or audio LLM, called one way and answering one way.

Models come as plain callables returning whatever their authors chose, or as Hugging Face
``transformers`` pipelines with their own calling conventions and output shapes. The wrappers
in :mod:`guard.wrappers` must not care, so this module does two jobs:

- *normalise outputs*: :func:`as_waveform`, :func:`as_labels` and :func:`as_text` accept the
  shapes models really return (tuples, ``{"audio", "sampling_rate"}`` dicts, lists of
  ``{label, score}``, ``generated_text`` strings or chat transcripts) and give one type back,
  or a sentence saying what was wrong;
- *fix calling conventions*: :class:`PipelineGenerator`, :class:`PipelineTagger` and
  :class:`TransformersAudioLLM` call a ``transformers`` object the way it expects to be called.

transformers 4.x has no ``audio-text-to-text`` pipeline task (it is only a Hub tag); audio
LLMs such as Qwen2-Audio are run as a model plus a processor, so that is what
:class:`TransformersAudioLLM` adapts.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from guard.audio import resample, to_mono

AUDIO_KEYS = ("audio", "array", "raw", "waveform")
RATE_KEYS = ("sampling_rate", "sample_rate")
TEXT_KEYS = ("generated_text", "text", "answer")
MAX_CHANNELS = 8


class AdapterError(ValueError):
    """A model answered in a shape no adapter understands; the message names the shape."""


@dataclass(frozen=True)
class Label:
    """One tag and its score; ``source`` tells a model's labels from audioguard's."""

    label: str
    score: float
    source: str = "model"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "source": self.source}


def as_waveform(output: Any, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """A generator's output as float32 ``(channels, samples)`` and its rate.

    Accepts ``(array, rate)``, a ``transformers`` text-to-audio dict (``{"audio": array,
    "sampling_rate": rate}``), a list holding one such dict, or a bare array with
    ``sample_rate`` given. Arrays may be numpy or torch, 1-D, ``(channels, samples)``,
    ``(samples, channels)`` (soundfile's layout) or with a leading batch axis of one.
    """
    audio, rate = _split_audio(output)
    rate = sample_rate if rate is None else rate
    if rate is None or int(rate) <= 0 or int(rate) != rate:
        raise AdapterError(f"the generator gave no usable sample rate (got {rate!r})")
    waveform = _as_tensor(audio)
    if waveform.dim() == 3 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2:
        raise AdapterError(f"the generator's audio has shape {tuple(waveform.shape)}, not 1-D/2-D")
    if waveform.numel() == 0:
        raise AdapterError("the generator's audio holds no samples")
    if waveform.shape[0] > waveform.shape[1]:
        waveform = waveform.T
    if waveform.shape[0] > MAX_CHANNELS:
        raise AdapterError(
            f"the generator's audio has {waveform.shape[0]} channels; at most {MAX_CHANNELS} are"
            " supported"
        )
    if not bool(torch.isfinite(waveform).all()):
        raise AdapterError("the generator's audio holds NaN or infinite samples")
    return waveform.contiguous(), int(rate)


def _split_audio(output: Any) -> tuple[Any, int | None]:
    if isinstance(output, Sequence) and not isinstance(output, str | bytes):
        if len(output) == 1 and isinstance(output[0], Mapping):
            return _split_audio(output[0])
        if len(output) == 2 and isinstance(output[1], numbers.Real):
            return output[0], output[1]
    if isinstance(output, Mapping):
        audio = next((output[k] for k in AUDIO_KEYS if k in output), None)
        rate = next((output[k] for k in RATE_KEYS if k in output), None)
        if audio is None:
            raise AdapterError(f"the generator's dict has no audio (keys: {sorted(output)})")
        return audio, rate
    return output, None


def _as_tensor(audio: Any) -> torch.Tensor:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if isinstance(audio, str | bytes) or not isinstance(audio, np.ndarray | Sequence):
        raise AdapterError(f"the generator returned {type(audio).__name__}, not audio samples")
    array = np.asarray(audio)
    if array.dtype == np.int16:
        return torch.from_numpy(array / 32768.0).float()
    if array.dtype == np.int32:
        return torch.from_numpy(array / 2147483648.0).float()
    if array.dtype.kind != "f":
        raise AdapterError(f"the generator's samples are {array.dtype}, not float or PCM")
    return torch.from_numpy(array.astype(np.float32))


def as_labels(output: Any) -> list[Label]:
    """A tagger's output as labels, in the model's order.

    Accepts what ``transformers`` audio-classification returns (``[{"label", "score"}]``,
    or that list wrapped once for a batch of one), a ``{label: score}`` dict (sorted by
    score), ``(label, score)`` pairs, :class:`Label` objects, or bare label strings (score 1).
    """
    if isinstance(output, Mapping):
        if "label" in output:
            return [_label(output)]
        pairs = sorted(output.items(), key=lambda item: -float(item[1]))
        return [Label(str(k), float(v)) for k, v in pairs]
    if not isinstance(output, Sequence) or isinstance(output, str | bytes):
        raise AdapterError(f"the tagger returned {type(output).__name__}, not a list of labels")
    if len(output) == 1 and isinstance(output[0], list):
        return as_labels(output[0])
    return [_label(item) for item in output]


def _label(item: Any) -> Label:
    if isinstance(item, Label):
        return item
    if isinstance(item, str):
        return Label(item, 1.0)
    if isinstance(item, Mapping) and "label" in item:
        return Label(str(item["label"]), float(item.get("score", 1.0)))
    if isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str):
        return Label(item[0], float(item[1]))
    raise AdapterError(f"the tagger returned a label of an unknown shape: {item!r:.80}")


def as_text(output: Any) -> str:
    """An audio LLM's answer as a string.

    Accepts a string, ``{"generated_text": ...}`` (also ``text`` or ``answer``), a list of
    one such item, or a chat transcript (``[{"role", "content"}]``, as ``transformers``
    chat pipelines return it), whose last assistant message is the answer.
    """
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping):
        if "role" in output and "content" in output:
            return _content_text(output["content"])
        for key in TEXT_KEYS:
            if key in output:
                return as_text(output[key])
        raise AdapterError(f"the model's dict has no text (keys: {sorted(output)})")
    if isinstance(output, Sequence) and output:
        if all(isinstance(m, Mapping) and "role" in m for m in output):
            replies = [m for m in output if m["role"] == "assistant"] or list(output)
            return _content_text(replies[-1]["content"])
        if len(output) == 1:
            return as_text(output[0])
    raise AdapterError(f"the model returned {type(output).__name__}, not text")


def _content_text(content: Any) -> str:
    """A chat message's content: a string, or the text parts of a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        if parts:
            return "".join(parts)
    raise AdapterError(f"a chat message's content is {type(content).__name__}, not text")


def model_name(model: Any) -> str:
    """What an audit record calls a model: its own ``name``, a function's name, or its class."""
    name = getattr(model, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(model, "__name__", type(model).__name__)


def pipeline_task(pipe: Any) -> str:
    """The task of a ``transformers`` pipeline, also for one built from its class directly."""
    task = getattr(pipe, "task", "")
    if task:
        return "text-to-audio" if task == "text-to-speech" else task
    from transformers import AudioClassificationPipeline, TextToAudioPipeline

    if isinstance(pipe, AudioClassificationPipeline):
        return "audio-classification"
    if isinstance(pipe, TextToAudioPipeline):
        return "text-to-audio"
    raise AdapterError(f"cannot tell which task the {type(pipe).__name__} pipeline performs")


def _pipeline_model_name(pipe: Any) -> str:
    config = getattr(getattr(pipe, "model", None), "config", None)
    return str(getattr(config, "name_or_path", "") or type(pipe.model).__name__)


class PipelineGenerator:
    """A ``text-to-speech`` / ``text-to-audio`` pipeline as ``text -> (waveform, rate)``."""

    def __init__(self, pipe: Any, **forward_params: Any) -> None:
        if pipeline_task(pipe) != "text-to-audio":
            raise AdapterError(f"expected a text-to-audio pipeline, got {pipeline_task(pipe)!r}")
        self.pipe = pipe
        self.forward_params = forward_params
        self.name = _pipeline_model_name(pipe)

    def __call__(self, text: str, **forward_params: Any) -> tuple[torch.Tensor, int]:
        return as_waveform(self.pipe(text, **{**self.forward_params, **forward_params}))


class PipelineTagger:
    """An ``audio-classification`` pipeline as ``(waveform, rate) -> labels``.

    The pipeline gets the mono mix (:func:`guard.audio.to_mono`: the loudest channel where the
    channels cancel in antiphase) at the caller's rate and resamples it to its feature
    extractor's rate itself, as it does for any ``{"raw", "sampling_rate"}`` input.
    """

    def __init__(self, pipe: Any, top_k: int | None = None) -> None:
        if pipeline_task(pipe) != "audio-classification":
            raise AdapterError(
                f"expected an audio-classification pipeline, got {pipeline_task(pipe)!r}"
            )
        self.pipe = pipe
        self.top_k = top_k
        self.name = _pipeline_model_name(pipe)

    def __call__(self, audio: torch.Tensor, sample_rate: int) -> list[Label]:
        mono = to_mono(audio.float())[0].numpy()
        params = {} if self.top_k is None else {"top_k": self.top_k}
        return as_labels(self.pipe({"raw": mono, "sampling_rate": sample_rate}, **params))


class TransformersAudioLLM:
    """A ``transformers`` audio LLM (model + processor) as ``(waveform, rate, question) -> text``.

    The conversation goes through the processor's chat template with one audio part and one
    text part, the processor is called as ``processor(text=prompt, audio=[mono], ...)`` —
    the Qwen2-Audio convention — and only the newly generated tokens are decoded.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)

    def __call__(self, audio: torch.Tensor, sample_rate: int, question: str) -> str:
        rate = int(self.processor.feature_extractor.sampling_rate)
        mono = resample(to_mono(audio.float())[0], sample_rate, rate).numpy()
        conversation: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            conversation.append({"role": "system", "content": self.system_prompt})
        conversation.append(
            {
                "role": "user",
                "content": [{"type": "audio", "audio": mono}, {"type": "text", "text": question}],
            }
        )
        prompt = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(text=prompt, audio=[mono], sampling_rate=rate, return_tensors="pt")
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


Generate = Callable[..., Any]
"""``generate(text, **kwargs)``: returns anything :func:`as_waveform` accepts."""
Tag = Callable[[torch.Tensor, int], Any]
"""``tag(waveform, sample_rate)``: returns anything :func:`as_labels` accepts."""
Answer = Callable[[torch.Tensor, int, str], Any]
"""``answer(waveform, sample_rate, question)``: returns anything :func:`as_text` accepts."""
