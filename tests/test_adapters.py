"""Adapters: output normalisation, espeak-ng, and real transformers models behind each adapter.

The models are real ``transformers`` objects built offline: the project's own detector
exported as an audio-classification model (the shipped weights when they exist, else a
compact AST and head built here), a small randomly initialised VITS text-to-speech pipeline,
and a small randomly initialised Qwen2-Audio with a character-level tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_sample
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    TextToAudioPipeline,
    VitsConfig,
    VitsModel,
    VitsTokenizer,
    WhisperFeatureExtractor,
    pipeline,
)

from detectors import load_detector
from detectors.hf_export import export_detector
from guard.adapters import (
    AdapterError,
    Label,
    PipelineGenerator,
    PipelineTagger,
    TransformersAudioLLM,
    as_labels,
    as_text,
    as_waveform,
    pipeline_task,
)
from guard.espeak_tts import EspeakError, EspeakTTS
from guard.guard import Guard, GuardConfig
from guard.wrappers import (
    DISCLOSURE,
    GuardedAudioLLM,
    GuardedGenerator,
    GuardedTagger,
    guard_pipeline,
)
from watermark.keys import write_key

# -- output normalisation ------------------------------------------------------------------


def test_waveforms_in_every_shape_models_return_become_channels_by_samples():
    mono = np.linspace(-0.5, 0.5, 1000, dtype=np.float64)
    for output in (
        (mono, 16000),
        {"audio": mono[None, :], "sampling_rate": 16000},
        [{"audio": mono, "sampling_rate": 16000}],
        (torch.from_numpy(mono)[None, None, :], 16000.0),
    ):
        audio, rate = as_waveform(output)
        assert audio.shape == (1, 1000) and audio.dtype == torch.float32 and rate == 16000
        assert torch.allclose(audio[0], torch.from_numpy(mono).float())
    stereo, rate = as_waveform(np.stack([mono, -mono], axis=1), sample_rate=8000)  # soundfile
    assert stereo.shape == (2, 1000) and rate == 8000 and stereo[1, 0] == 0.5
    pcm, _ = as_waveform((np.array([16384, -32768], dtype=np.int16), 8000))
    assert pcm.tolist() == [[0.5, -1.0]]


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (np.zeros(100), "sample rate"),
        ({"audio": np.zeros(100)}, "sample rate"),
        ({"wave": np.zeros(100), "sampling_rate": 8000}, "no audio"),
        ((np.array([0.0, np.nan]), 8000), "NaN"),
        (("not audio", 8000), "not audio samples"),
        ((np.zeros((1, 0)), 8000), "no samples"),
        ((np.zeros((9, 100)), 8000), "9 channels; at most 8"),
    ],
)
def test_unusable_generator_output_is_named(output, problem):
    with pytest.raises(AdapterError, match=problem):
        as_waveform(output)


def test_labels_from_pipelines_dicts_and_pairs():
    hf = [{"label": "Speech", "score": 0.9}, {"label": "Music", "score": 0.1}]
    assert as_labels(hf) == [Label("Speech", 0.9), Label("Music", 0.1)]
    assert as_labels([hf]) == as_labels(hf)  # a batch of one
    assert as_labels({"Music": 0.1, "Speech": 0.9}) == as_labels(hf)  # sorted by score
    assert as_labels([("Speech", 0.9), "Music"]) == [Label("Speech", 0.9), Label("Music", 1.0)]
    with pytest.raises(AdapterError, match="not a list of labels"):
        as_labels(0.9)
    with pytest.raises(AdapterError, match="unknown shape"):
        as_labels([{"score": 0.3}])


def test_text_from_strings_generated_text_and_chat_transcripts():
    assert as_text("a dog barks") == "a dog barks"
    assert as_text([{"generated_text": "a dog barks"}]) == "a dog barks"
    chat = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "what?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a dog "}, {"text": "barks"}]},
    ]
    assert as_text([{"generated_text": chat}]) == "a dog barks"
    with pytest.raises(AdapterError, match="no text"):
        as_text({"label": "dog"})
    with pytest.raises(AdapterError, match="not text"):
        as_text(None)


# -- espeak-ng --------------------------------------------------------------------------------


def test_espeak_speaks_text_and_silence_and_names_failures():
    speech, rate = EspeakTTS()("-v is not an option here; this is text.")
    assert rate == 22050 and speech.shape[0] == 1 and speech.shape[1] > rate
    assert speech.abs().max() > 0.1
    silence, _ = EspeakTTS(amplitude=0)("quiet")
    assert silence.shape[1] > 0 and silence.abs().max() == 0
    with pytest.raises(EspeakError, match="does not exist"):
        EspeakTTS(voice="nonexistent")("hello")
    with pytest.raises(EspeakError, match="no text"):
        EspeakTTS()("  ")


# -- the project's own AST classifier as an audio-classification pipeline --------------------


@pytest.fixture(scope="module")
def ast_pipeline(tmp_path_factory):
    directory = export_detector(load_detector(), tmp_path_factory.mktemp("hf"))
    return pipeline("audio-classification", model=str(directory))


def test_exported_detector_scores_a_window_exactly_as_the_detector(ast_pipeline):
    clip, rate = read_sample("speech/allison_vm_instructions_8k.flac")  # 8 kHz: resampled
    detector = load_detector()
    first = detector.predict(clip, rate).segments[0]
    assert first.start == 0.0  # the clip opens with speech, so window 0 was judged

    labels = PipelineTagger(ast_pipeline)(clip, rate)

    scores = {label.label: label.score for label in labels}
    assert set(scores) == {"real", "synthetic"}
    assert scores["synthetic"] == pytest.approx(first.synthetic_probability, abs=1e-4)
    assert scores["real"] == pytest.approx(1 - scores["synthetic"], abs=1e-6)
    assert ast_pipeline.model.config.audioguard_model == detector.model_id
    exported = {p.name for p in Path(ast_pipeline.model.name_or_path).iterdir()}
    assert exported == {"config.json", "model.safetensors", "preprocessor_config.json"}


def test_guarded_project_tagger_joins_the_verdict_to_its_labels(ast_pipeline):
    guard = Guard(GuardConfig(public_backends=()))
    clip, rate = read_sample("speech/fillets_society_stebet0.flac")

    tagged = GuardedTagger.from_pipeline(ast_pipeline, guard)(clip, rate)

    names = [label.label for label in tagged.labels]
    assert sorted(names[:2]) == ["real", "synthetic"]
    assert {label.source for label in tagged.labels[:2]} == {"model"}
    by_name = {label.label: label for label in tagged.labels}
    assert by_name["audioguard/synthetic-voice"].source == "audioguard"
    assert by_name["audioguard/synthetic-voice"].score == tagged.verdict.synthetic_probability
    assert f"audioguard/decision/{tagged.verdict.decision}" in by_name
    assert tagged.to_list()[0].keys() == {"label", "score", "source"}


# -- text-to-speech pipeline ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tts_pipeline(tmp_path_factory):
    """A small random VITS: real transformers code end to end, noise for a voice."""
    root = tmp_path_factory.mktemp("vits")
    symbols = ["<pad>", "<unk>", *" abcdefghijklmnopqrstuvwxyz.,'?!"]
    (root / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    tokenizer = VitsTokenizer(str(root / "vocab.json"), add_blank=True, phonemize=False)
    config = VitsConfig(
        vocab_size=len(symbols),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=64,
        flow_size=16,
        spectrogram_bins=33,
        upsample_initial_channel=32,
        upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16,
        depth_separable_num_layers=1,
        sampling_rate=16000,
    )
    torch.manual_seed(0)
    return pipeline("text-to-speech", model=VitsModel(config).eval(), tokenizer=tokenizer)


def test_tts_pipeline_output_becomes_a_waveform(tts_pipeline):
    torch.manual_seed(1)
    raw = tts_pipeline("hello world.")
    torch.manual_seed(1)
    audio, rate = PipelineGenerator(tts_pipeline)("hello world.")

    assert rate == raw["sampling_rate"] == 16000
    assert audio.shape == (1, raw["audio"].shape[-1]) and audio.dtype == torch.float32
    assert torch.equal(audio[0], torch.from_numpy(raw["audio"]).reshape(-1))


def test_pipelines_are_routed_to_the_wrapper_their_task_needs(tmp_path, tts_pipeline, ast_pipeline):
    write_key(tmp_path / "studio.key")
    guard = Guard(
        GuardConfig(keys=(tmp_path / "studio.key",), use_detector=False, public_backends=())
    )
    generator = guard_pipeline(tts_pipeline, guard, payload="ab12")
    assert isinstance(generator, GuardedGenerator)
    assert isinstance(generator.generate, PipelineGenerator)
    assert isinstance(guard_pipeline(ast_pipeline, guard), GuardedTagger)
    built_directly = TextToAudioPipeline(model=tts_pipeline.model, tokenizer=tts_pipeline.tokenizer)
    assert not built_directly.task and pipeline_task(built_directly) == "text-to-audio"
    with pytest.raises(AdapterError, match="text-to-audio"):
        PipelineGenerator(ast_pipeline)
    with pytest.raises(AdapterError, match="audio-classification"):
        PipelineTagger(tts_pipeline)


# -- audio LLM (model + processor) ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_audio_llm():
    """A randomly initialised Qwen2-Audio with a one-character-per-token tokenizer."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>"]
    special += ["<|audio_bos|>", "<|audio_eos|>"]
    vocab = {t: i for i, t in enumerate([*special, "\n", *map(chr, range(32, 127))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
        model_input_names=["input_ids", "attention_mask"],
    )
    processor = Qwen2AudioProcessor(WhisperFeatureExtractor(feature_size=128), tokenizer)
    config = Qwen2AudioConfig(
        audio_config={
            "d_model": 16,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "num_mel_bins": 128,
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 32,
            "vocab_size": len(vocab),
        },
        audio_token_index=vocab["<|AUDIO|>"],
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = vocab["<|endoftext|>"]
    return model, processor


def test_audio_llm_hears_the_audio_and_returns_only_new_text(tiny_audio_llm):
    model, processor = tiny_audio_llm
    heard = []
    hook = model.audio_tower.register_forward_hook(lambda m, args, out: heard.append(args[0]))
    clip, rate = read_sample("speech/allison_vm_instructions_8k.flac")
    try:
        answer = TransformersAudioLLM(model, processor, max_new_tokens=6)(clip, rate, "Who?")
    finally:
        hook.remove()

    assert len(heard) == 1 and heard[0].shape == (1, 128, 3000)  # 16 kHz log-mels, 30 s
    assert isinstance(answer, str) and 0 < len(answer) <= 6  # no prompt, no special tokens
    assert "Who?" not in answer and "<|" not in answer


def test_guarded_transformers_llm_discloses_a_watermarked_voice(tmp_path, tiny_audio_llm):
    model, processor = tiny_audio_llm
    write_key(tmp_path / "studio.key")
    guard = Guard(
        GuardConfig(keys=(tmp_path / "studio.key",), use_detector=False, public_backends=())
    )
    generated = GuardedGenerator(EspeakTTS(), guard, payload="ab12")(
        "This voice was made by a machine, and its mark says so."
    )
    llm = GuardedAudioLLM.from_transformers(model, processor, guard, max_new_tokens=4)

    reply = llm(generated.audio, generated.sample_rate, "What is said?")

    assert reply.verdict.decision == "label" and reply.verdict.matched_rules == [
        "known-ai-watermark"
    ]
    assert reply.answered and reply.disclosed
    opening = DISCLOSURE.format(message=reply.verdict.message, rules="known-ai-watermark")
    assert reply.text.startswith(opening + "\n\n") and len(reply.text) > len(opening) + 2


def _antiphase_and_ordinary(rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(rate) / rate
    voice = 0.5 * torch.sin(2 * torch.pi * 220 * t)
    other = 0.2 * torch.sin(2 * torch.pi * 330 * t)
    return torch.stack([voice, -voice]), torch.stack([voice, other])


def test_tagger_and_audio_llm_hear_antiphase_stereo_through_its_loudest_channel():
    # A plain mean of [x, -x] is silence: the tagger and the LLM heard nothing.
    from types import SimpleNamespace

    rate = 16000
    antiphase, ordinary = _antiphase_and_ordinary(rate)
    heard: list[np.ndarray] = []

    class Pipe:
        task = "audio-classification"
        model = SimpleNamespace(config=SimpleNamespace(name_or_path="fake-tagger"))

        def __call__(self, inputs, **params):
            heard.append(inputs["raw"])
            return [{"label": "speech", "score": 0.9}]

    class Processor:
        feature_extractor = SimpleNamespace(sampling_rate=rate)

        def apply_chat_template(self, conversation, **kwargs):
            heard.append(conversation[-1]["content"][0]["audio"])
            return "prompt"

        def __call__(self, text, audio, sampling_rate, return_tensors):
            return {"input_ids": torch.zeros(1, 3, dtype=torch.long)}

        def batch_decode(self, tokens, skip_special_tokens):
            return ["ok"]

    model = SimpleNamespace(
        config=SimpleNamespace(name_or_path="fake-llm"),
        generate=lambda **inputs: torch.zeros(1, 5, dtype=torch.long),
    )
    tagger, llm = PipelineTagger(Pipe()), TransformersAudioLLM(model, Processor())
    for clip in (antiphase, ordinary):
        tagger(clip, rate)
        llm(clip, rate, "What is this?")

    for got in heard[:2]:
        np.testing.assert_allclose(got, antiphase[0].numpy(), atol=1e-6)
    for got in heard[2:]:  # ordinary stereo: the mean, bit for bit as before
        assert np.array_equal(got, ordinary.float().mean(dim=0).numpy())
