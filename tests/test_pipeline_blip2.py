"""BLIP-2 on the shared engine, with OPT, Llama (SmolLM2's architecture) and T5: captions and answers equal transformers'
generate token for token (greedy and beam search), the command line, recipes, and bad input as
typed errors, on the tiny models."""

from __future__ import annotations

import pytest
import torch

from edgevfm.runtime import InputError, load
from edgevfm.runtime.errors import UsageError


@pytest.fixture(scope="module")
def blip2(blip2_bundle):
    return load(blip2_bundle, threads=1)


@pytest.fixture(scope="module")
def blip2_t5(blip2_t5_bundle):
    return load(blip2_t5_bundle, threads=1)


@pytest.fixture(params=["opt", "llama", "t5"])
def model(request, blip2, blip2_t5, blip2_checkpoint, blip2_t5_checkpoint):
    """(pipeline, checkpoint) with each language model."""
    if request.param == "llama":
        return (load(request.getfixturevalue("blip2_llama_bundle"), threads=1),
                request.getfixturevalue("blip2_llama_checkpoint"))
    return {"opt": (blip2, blip2_checkpoint), "t5": (blip2_t5, blip2_t5_checkpoint)}[request.param]


def _transformers(checkpoint, pipeline, image, text, tokens, **settings) -> str:
    """transformers' generate on the processor's ids (image tokens, then the tokenized text; no text:
    OPT's generate builds image tokens + BOS itself, T5 takes the empty text) and the same pixels."""
    pixels = torch.from_numpy(pipeline.image_inputs([image]))
    queries = [checkpoint.model.config.image_token_id] * checkpoint.model.config.num_query_tokens
    seq2seq = not checkpoint.model.config.use_decoder_only_language_model
    ids = None if text is None and not seq2seq else torch.tensor([queries + checkpoint.assets["tokenizer"](
        text or "").input_ids])
    with torch.no_grad():
        out = checkpoint.model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=tokens, do_sample=False,
                                        **settings)
    start = 1 if seq2seq else len(queries) + 1 if ids is None else ids.shape[1]  # T5: after the decoder's start
    return checkpoint.assets["tokenizer"].decode(out[0, start:], skip_special_tokens=True).strip()


def test_image_features_and_captions_are_not_degenerate(model, photos):
    """Random presets give the learned queries a trained model's scale (transformers starts them
    at zero): two photos' features differ, and so do their captions."""
    pipeline, _ = model
    a, b = pipeline.image_features([photos[0]]), pipeline.image_features([photos[1]])
    assert a.std() > 0.01 and abs(a - b).max() > 0.01
    captions = [pipeline.caption_tokens([image], max_new_tokens=6)[0] for image in photos[:3]]
    assert len({tuple(c) for c in captions}) > 1 and any(len(set(c)) > 1 for c in captions)


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3), dict(num_beams=3, no_repeat_ngram_size=2,
                                                                       length_penalty=0.6)],
                         ids=["greedy", "beams", "beams-ngram-penalty"])
def test_caption_equals_transformers(settings, model, photos):
    pipeline, checkpoint = model
    for image in photos[:2]:
        expected = _transformers(checkpoint, pipeline, image, None, 12, **settings)
        assert pipeline.caption(image, max_new_tokens=12, **settings) == expected


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=2)], ids=["greedy", "beams"])
def test_answer_equals_transformers_with_the_question_prompt(settings, model, photos):
    pipeline, checkpoint = model
    for image, question in zip(photos[:2], ("what is in the picture?", "how many people are there?")):
        expected = _transformers(checkpoint, pipeline, image, f"Question: {question} Answer:", 8, **settings)
        assert pipeline.answer(image, question, max_new_tokens=8, **settings) == expected


def test_a_prompted_caption_continues_the_prompt(model, photos):
    pipeline, checkpoint = model
    expected = _transformers(checkpoint, pipeline, photos[1], "a photo of", 8)
    assert pipeline.caption(photos[1], "a photo of", max_new_tokens=8) == expected


def test_bad_input_is_a_typed_error(blip2, photos, tmp_path):
    with pytest.raises(InputError, match="a question must be a non-empty string, found ' '"):
        blip2.answer(photos[0], " ")
    with pytest.raises(InputError, match="a prompt must be a non-empty string or None"):
        blip2.caption(photos[0], "")
    with pytest.raises(InputError, match="over the model's context of 128"):
        blip2.caption(photos[0], "a photo of a cat " * 40)
    with pytest.raises(UsageError, match="num_beams must be an integer >= 1, found 0"):
        blip2.caption(photos[0], num_beams=0)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="notes.png"):
        blip2.caption(str(tmp_path / "notes.png"))


def test_caption_and_ask_commands(blip2_bundle, blip2, photos, tmp_path, capsys):
    from PIL import Image

    from edgevfm.runtime.cli import main

    Image.fromarray(photos[1]).save(tmp_path / "cat.png")
    assert main(["run", str(blip2_bundle), "caption", str(tmp_path / "cat.png"), "--beams", "2",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == blip2.caption(photos[1], max_new_tokens=6, num_beams=2) + "\n"
    assert main(["run", str(blip2_bundle), "ask", str(tmp_path / "cat.png"), "what is it?"]) == 0
    assert capsys.readouterr().out == blip2.answer(photos[1], "what is it?") + "\n"
    with pytest.raises(SystemExit) as exited:
        main(["run", str(blip2_bundle), "ask", str(tmp_path / "cat.png"), "what?", "--beams", "0"])
    assert exited.value.code == 2 and "--beams: expected an integer >= 1, found 0" in capsys.readouterr().err
    # a BLIP-2 task this bundle's checkpoint does not do: which checkpoint does (a usage error)
    assert main(["run", str(blip2_bundle), "match", str(tmp_path / "cat.png"), "a cat"]) == 2
    assert "to match images and texts, export a Blip2ForImageTextRetrieval" in capsys.readouterr().err
    # another family's task: this family's tasks
    assert main(["run", str(blip2_bundle), "classify", str(tmp_path / "cat.png"), "--labels", "a cat"]) == 3
    assert "is a blip2 bundle: its tasks are ask, caption, match, retrieve" in capsys.readouterr().err

T5_INT8 = {"vision": "int8", "embed": "int4", "encoder": "int8", "cross_kv": "int8", "text_decoder": "int8"}


@pytest.mark.parametrize("recipe, which, precisions", [
    ("blip2-int8", "opt", {"vision": "int8", "embed": "int4", "llm": "int8"}),
    ("blip2-int4", "opt", {"vision": "int8", "embed": "int4", "llm": "int4"}),
    ("blip2-int8", "t5", T5_INT8), ("blip2-int4", "t5", T5_INT8 | {"text_decoder": "int4"})])
def test_family_recipes_say_what_each_part_got_and_stay_near_fp32(recipe, which, precisions, blip2, blip2_bundle,
                                                                   blip2_t5, blip2_t5_bundle, photos, tmp_path):
    """Each part as the recipe names it; the quantized image features (cosine >= 0.99) and the first
    token's logits (>= 0.99 at 8 bits; >= 0.95 at 4, where T5's decoder is nearly all 4-bit: the
    8-bit patterns of int4-mixed name OPT's and Llama's layers) within a stated distance of FP32."""
    import numpy as np

    from edgevfm.quantize.api import quantize

    blip2, bundle = {"opt": (blip2, blip2_bundle), "t5": (blip2_t5, blip2_t5_bundle)}[which]
    quantized = load(quantize(bundle, recipe, tmp_path / recipe, show_progress=False), threads=1)
    assert {name: part.precision for name, part in quantized.bundle.parts.items()} == precisions
    assert quantized.manifest["recipe"]["name"] == recipe

    def cosine(a, b):
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for image in photos[:2]:
        assert cosine(quantized.image_features([image]), blip2.image_features([image])) >= 0.99
        logits = []
        for p in (blip2, quantized):
            prompt = p.prompt(image, "a photo of")
            if p.seq2seq:
                decoder, embeds = p.encoded(prompt), np.asarray([[p.manifest["llm"]["decoder_start_token_id"]]])
            else:
                decoder, embeds = p.decoder, prompt.embeds[None]
            n = embeds.shape[1]
            logits.append(decoder.step(embeds, np.ones((1, n), np.int64), np.arange(n)[None],
                                       decoder.empty_cache(1))[0])
        assert cosine(*logits) >= (0.99 if recipe == "blip2-int8" else 0.95)


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3)], ids=["greedy", "beams"])
def test_min_new_tokens_bars_the_stop_token_as_transformers(settings, blip2, blip2_checkpoint, photos):
    """A stop token the model does emit (its 2nd greedy token) is barred until 5 tokens are made,
    then ends the caption: as transformers' min_new_tokens."""
    image = photos[1]
    stop = blip2.caption_tokens([image], max_new_tokens=2, stop_token_ids=())[0][1]
    pixels = torch.from_numpy(blip2.image_inputs([image]))
    with torch.no_grad():
        out = blip2_checkpoint.model.generate(pixel_values=pixels, max_new_tokens=10, min_new_tokens=5,
                                              eos_token_id=stop, do_sample=False, **settings)
    expected = out[0, blip2_checkpoint.model.config.num_query_tokens + 1:].tolist()
    expected = expected[:expected.index(stop)] if stop in expected else expected
    ours = blip2.caption_tokens([image], max_new_tokens=10, min_new_tokens=5, stop_token_ids=(stop,), **settings)[0]
    assert ours == expected and len(ours) >= 5 and stop not in ours
    with pytest.raises(UsageError, match="min_new_tokens must be an integer >= 0, found -1"):
        blip2.caption(image, min_new_tokens=-1)
