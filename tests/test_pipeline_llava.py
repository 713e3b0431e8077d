"""LlavaPipeline on the shared engine: greedy generation equals transformers' generate token for
token (Llama and Qwen2 text models), seeded sampling repeats, streaming equals the plain answer,
conversations keep (and a new one drops) their history, a batch equals its rows, and every bad
input is a typed error."""

from __future__ import annotations

from edgevfm.runtime.errors import UnknownNameError

import numpy as np
import pytest
import torch

from edgevfm.runtime import InputError, load
from edgevfm.runtime.errors import UsageError
from edgevfm.runtime.families.llava import message
from edgevfm.runtime.generate import generate, generate_tokens
from edgevfm.runtime.sampling import GenerationConfig

QUESTION = "What is unusual about this image?"


@pytest.fixture(scope="module")
def llava(llava_bundle):
    return load(llava_bundle, threads=1)


def _transformers_greedy(checkpoint, pipeline, image, question, new_tokens):
    """transformers' generate on the same prompt ids and pixels."""
    prompt = pipeline.prompt([message("user", question, with_image=True)], pipeline.image_features([image]))
    pixels = torch.from_numpy(pipeline.image_inputs([image]))
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        out = checkpoint.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                        pad_token_id=0, min_new_tokens=new_tokens)
    return prompt, out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("which", ["llama", "qwen2", "llama-plain-graph"])
def test_greedy_equals_transformers_token_for_token(which, llava_checkpoint, llava_qwen2_checkpoint, llava_bundle,
                                                    llava_qwen2_bundle, llava_plain_bundle, photos):
    checkpoint, bundle = {"llama": (llava_checkpoint, llava_bundle),
                          "qwen2": (llava_qwen2_checkpoint, llava_qwen2_bundle),
                          "llama-plain-graph": (llava_checkpoint, llava_plain_bundle)}[which]
    pipeline = load(bundle, threads=1)
    for image in photos[:2]:
        prompt, expected = _transformers_greedy(checkpoint, pipeline, image, QUESTION, 24)
        ours = generate(pipeline.decoder, pipeline.embed, [prompt.embeds], [prompt.ids],
                        GenerationConfig(max_new_tokens=24))
        assert ours.tokens[0] == expected


@pytest.mark.parametrize("graph, settings", [
    ("builder", dict(num_beams=3)),
    ("builder", dict(num_beams=4, length_penalty=0.5, no_repeat_ngram_size=2)),
    ("builder", dict(num_beams=2, early_stopping=True, length_penalty=1.5)),
    ("builder", dict(num_beams=3, early_stopping="never")),
    ("plain", dict(num_beams=3, no_repeat_ngram_size=3)),
])
def test_beam_search_equals_transformers_token_for_token(graph, settings, llava_checkpoint, llava_bundle,
                                                         llava_plain_bundle, photos):
    """A stop token the model does emit (its 4th greedy token) makes beams finish at different
    lengths, so the finished-beam bookkeeping, length penalty and early stopping all take part."""
    pipeline = load({"builder": llava_bundle, "plain": llava_plain_bundle}[graph], threads=1)
    for image in photos[:2]:
        prompt = pipeline.prompt([message("user", QUESTION, with_image=True)], pipeline.image_features([image]))
        stop = generate(pipeline.decoder, pipeline.embed, [prompt.embeds], [prompt.ids],
                        GenerationConfig(max_new_tokens=4)).tokens[0][3]
        ids = torch.tensor([prompt.ids])
        with torch.no_grad():
            out = llava_checkpoint.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                  pixel_values=torch.from_numpy(pipeline.image_inputs([image])),
                                                  max_new_tokens=16, do_sample=False, eos_token_id=stop,
                                                  pad_token_id=0, **settings)
        expected = out[0, ids.shape[1]:].tolist()
        expected = expected[:-1] if expected[-1] == stop else expected
        ours = generate(pipeline.decoder, pipeline.embed, [prompt.embeds], [prompt.ids],
                        GenerationConfig(max_new_tokens=16, stop_token_ids=(stop,), **settings))
        assert ours.tokens[0] == expected


def test_beam_search_answers_at_once(llava, photos):
    beams = llava.answer(photos[0], QUESTION, max_new_tokens=8, num_beams=3)
    assert list(llava.chat(photos[0], num_beams=3).send(QUESTION, stream=True, max_new_tokens=8)) == [beams]
    with pytest.raises(UsageError, match=r"beam search \(num_beams=3\) .* cannot stream"):
        next(generate_tokens(llava.decoder, llava.embed, [np.zeros((2, 64), np.float32)], [[1, 2]],
                             GenerationConfig(num_beams=3)))


def test_image_features_are_merged_like_transformers(llava_checkpoint, llava, photos):
    prompt = llava.prompt([message("user", QUESTION, with_image=True)], llava.image_features([photos[1]]))
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        model = llava_checkpoint.model.model
        features = model.get_image_features(pixel_values=torch.from_numpy(llava.image_inputs([photos[1]])),
                                            vision_feature_layer=-2, vision_feature_select_strategy="default")
        embeds = model.get_input_embeddings()(ids)
        mask = (ids == llava.image_token_id)[..., None].expand_as(embeds)
        expected = embeds.masked_scatter(mask, torch.cat(list(features.pooler_output)))[0].numpy()
    assert (np.asarray(prompt.ids) == llava.image_token_id).sum() == 16
    np.testing.assert_allclose(prompt.embeds, expected, atol=1e-4)


def test_seeded_sampling_repeats_and_seeds_differ(llava, photos):
    options = dict(do_sample=True, temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=16)
    a = llava.answer(photos[0], QUESTION, seed=7, **options)
    assert a == llava.answer(photos[0], QUESTION, seed=7, **options)
    assert {llava.answer(photos[0], QUESTION, seed=s, **options) for s in range(4)} != {a}


def test_streaming_yields_the_same_text(llava, photos):
    plain = llava.answer(photos[1], QUESTION, max_new_tokens=20)
    pieces = list(llava.chat(photos[1]).send(QUESTION, stream=True, max_new_tokens=20))
    assert "".join(pieces) == plain and len(pieces) > 1


def test_history_and_a_new_conversation(llava, photos):
    chat = llava.chat(photos[1], max_new_tokens=8)
    first = chat.send("Hello there")
    second = chat.send("And then?")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.history[1]["content"][0]["text"] == first
    rendered = llava.render(chat.history)
    assert rendered.count("USER:") == 2 and rendered.count("<image>") == 1  # the image goes with the first turn
    assert chat.history[3]["content"][0]["text"] == second
    fresh = llava.chat(photos[1], max_new_tokens=8)
    assert fresh.history == []
    fresh.send("And then?")
    rendered = llava.render(fresh.history)
    assert rendered.count("USER:") == 1 and "Hello there" not in rendered  # no history leaks into a new chat


def _second_turn(llava, image, cached: bool) -> tuple[str, int]:
    """The answer to a second message, with the chat's cache of the first turn or, for
    ``cached=False``, from a chat given the same history and no cache (a full prefill)."""
    chat = llava.chat(image, max_new_tokens=8)
    chat.send("Hello there")
    if not cached:
        history, chat = chat.history, llava.chat(image, max_new_tokens=8)
        chat.history = list(history)
    return chat.send("And then?"), chat.session.prefilled


@pytest.mark.parametrize("graph", ["builder", "plain"])
def test_a_chat_prefills_only_what_a_turn_adds(graph, llava_bundle, llava_plain_bundle, photos):
    llava = load({"builder": llava_bundle, "plain": llava_plain_bundle}[graph], threads=1)
    chat = llava.chat(photos[1], max_new_tokens=8)
    chat.send("Hello there")
    first = chat.session.prefilled
    assert first > llava.image_seq_length  # the image and the message
    chat.send("And then?")
    full = _second_turn(llava, photos[1], cached=False)[1]  # the whole second prompt
    # the first prompt's cache is reused whole; what is prefilled is the rest (the first answer as
    # the template renders it back, which random weights' odd text may tokenize differently)
    assert 0 < chat.session.prefilled <= full - first


def test_a_cached_turn_answers_as_a_full_prefill(smol_bundle, photos):
    """On the trained SmolLM2 (clear margins between tokens), reusing the cache changes no token."""
    llava = load(smol_bundle, threads=2)
    cached, prefilled = _second_turn(llava, photos[1], cached=True)
    full, full_prefilled = _second_turn(llava, photos[1], cached=False)
    assert cached == full and cached.strip() and prefilled < full_prefilled / 5


def test_stop_string_ends_the_answer(llava, photos):
    full = llava.answer(photos[1], QUESTION, max_new_tokens=20)
    stop = full.strip()[2:5]
    assert stop and stop in full
    cut = llava.answer(photos[1], QUESTION, max_new_tokens=20, stop_strings=(stop,))
    assert cut == full[:full.index(stop)]


@pytest.mark.parametrize("graph", ["builder", "plain"])
def test_batch_equals_each_row_alone(graph, llava_bundle, llava_plain_bundle, photos):
    """The plain graph decodes the two prompts as one left-padded batch; the builder graph (no
    padding) runs rows of different lengths one by one. Either way each row is its answer alone."""
    llava = load({"builder": llava_bundle, "plain": llava_plain_bundle}[graph], threads=1)
    questions = ["What is this?", QUESTION]
    together = llava.answer_batch(photos[:2], questions, max_new_tokens=10)
    assert together == [llava.answer(im, q, max_new_tokens=10) for im, q in zip(photos[:2], questions)]
    assert llava.decoder.pads_left == (graph == "plain")


def test_a_shared_buffer_decoder_refuses_padding_and_overflow(llava, photos):
    prompt = llava.prompt([message("user", QUESTION, with_image=True)], llava.image_features([photos[0]]))
    length = len(prompt.ids)
    embeds, ones = prompt.embeds[None], np.ones((1, length), np.int64)
    padded = ones.copy()
    padded[0, 0] = 0
    with pytest.raises(UsageError, match=r"takes no padding: expected an attention mask of ones .* with 1 zeros"):
        llava.decoder.step(embeds, padded, None, llava.decoder.empty_cache(1, length))
    with pytest.raises(InputError, match=rf"holds {length - 1} positions and this step needs {length}"):
        llava.decoder.step(embeds, ones, None, llava.decoder.empty_cache(1, length - 1))
    with pytest.raises(UsageError, match="needs the cache capacity"):
        llava.decoder.empty_cache(1)


def test_timings_and_loop_overhead(llava, photos):
    prompt = llava.prompt([message("user", QUESTION, with_image=True)], llava.image_features([photos[0]]))
    result = generate(llava.decoder, llava.embed, [prompt.embeds], [prompt.ids], GenerationConfig(max_new_tokens=12))
    stats = result.stats
    assert stats["steps"] == len(result.tokens[0]) - 1 == 11
    assert 0 < stats["decode_backend"] <= stats["decode"] and 0 <= result.loop_overhead_per_token < stats["decode"]


def test_int4_recipe_runs_and_says_what_each_part_got(llava_bundle, tmp_path, photos):
    import json

    from edgevfm.quantize.api import quantize

    out = quantize(llava_bundle, "llava-int4", tmp_path / "int4", show_progress=False)
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]
    assert recipe["parts"]["llm"]["bits"] == 4 and recipe["parts"]["vision"] == {"kept": "fp32"}
    assert isinstance(load(out).answer(photos[0], QUESTION, max_new_tokens=5), str)


# -- bad input -------------------------------------------------------------------------------
def test_prompt_longer_than_the_context(llava, photos):
    with pytest.raises(InputError, match=r"over the model's context of 512.*start a new chat"):
        llava.answer(photos[0], "the cat " * 300, max_new_tokens=10)


def test_not_an_image(llava, tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(InputError, match="not an image Pillow can read"):
        llava.answer(tmp_path / "x.png", QUESTION)


def test_more_images_than_image_tokens(llava, photos):
    with pytest.raises(InputError, match="1 image token\\(s\\) and 2 image\\(s\\)"):
        llava.prompt([message("user", QUESTION, with_image=True)], llava.image_features(photos[:2]))


@pytest.mark.parametrize("options, message", [(dict(max_new_tokens=0), "max_new_tokens"),
                                              (dict(temperature=-1, do_sample=True), "temperature"),
                                              (dict(beams=3), "unknown generation settings")])
def test_generation_settings_out_of_range(llava, photos, options, message):
    with pytest.raises(UsageError, match=message):
        llava.answer(photos[0], QUESTION, **options)


def test_empty_message(llava):
    with pytest.raises(InputError, match="must be a non-empty string"):
        llava.chat().send("   ")


def test_hostile_template_is_sandboxed(llava_bundle, tmp_path):
    from helpers import copy_bundle, edit_manifest

    bundle = copy_bundle(llava_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda m: m["chat"].update(template="{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    with pytest.raises(InputError, match="chat template cannot render"):
        load(bundle).answer(None, QUESTION)


# -- the command line ----------------------------------------------------------------------------
def test_chat_prompt_prints_one_answer(llava_bundle, llava, photos, tmp_path, capsys):
    from PIL import Image

    from edgevfm.runtime.cli import main

    Image.fromarray(photos[1]).save(tmp_path / "cat.png")
    assert main(["run", str(llava_bundle), "chat", str(tmp_path / "cat.png"), "--prompt", QUESTION,
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == llava.answer(photos[1], QUESTION, max_new_tokens=12) + "\n"
    assert main(["run", str(llava_bundle), "chat", str(tmp_path / "cat.png"), "--prompt", QUESTION,
                 "--max-new-tokens", "12", "--beams", "3"]) == 0
    assert capsys.readouterr().out == llava.answer(photos[1], QUESTION, max_new_tokens=12, num_beams=3) + "\n"
    with pytest.raises(SystemExit) as exited:
        main(["run", str(llava_bundle), "chat", "--prompt", QUESTION, "--beams", "0"])
    assert exited.value.code == 2 and "--beams: expected an integer >= 1, found 0" in capsys.readouterr().err


def test_interactive_chat_keeps_history_and_starts_over(llava_bundle, llava, monkeypatch, capsys):
    import io

    from edgevfm.runtime.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\nAnd then?\n/new\nAnd then?\n"))
    assert main(["run", str(llava_bundle), "chat", "--max-new-tokens", "6"]) == 0
    first, second, third = capsys.readouterr().out.splitlines()
    chat = llava.chat(max_new_tokens=6)
    assert [first, second] == [chat.send("Hello there"), chat.send("And then?")]
    assert third == llava.chat(max_new_tokens=6).send("And then?")


# -- a trained language model: answers are real English ------------------------------------------
def test_trained_preset_answers_and_int4_keeps_the_answer(smol_bundle, tmp_path):
    """trained:llava-smol's LLM is SmolLM2-135M-Instruct (its Q4_1 weights, dequantized): greedy
    "Paris" from the FP32 bundle, and from the 4-bit one."""
    from edgevfm.quantize.api import quantize

    question = "What is the capital of France?"
    assert "Paris" in load(smol_bundle, threads=2).answer(None, question, max_new_tokens=12)
    int4 = quantize(smol_bundle, "llava-int4", tmp_path / "int4", show_progress=False)
    assert "Paris" in load(int4, threads=2).answer(None, question, max_new_tokens=12)
    # what int4-mixed chose, on the builder graph's names: 4 bits for the MLP gate/up projections
    # of the middle layers (2..27 of 30), 8 bits for everything else
    import onnx

    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in onnx.load(str(int4 / "llm.onnx"), load_external_data=False).graph.node if n.op_type == "MatMulNBits"}
    four = sorted(name for name, b in bits.items() if b == 4)
    assert four == sorted(f"/model/layers.{i}/mlp/{p}_proj/MatMul_Q4" for i in range(2, 28) for p in ("gate", "up"))
    assert len(bits) == 151 and set(bits.values()) == {4, 8}
    with pytest.raises(UnknownNameError, match="unknown preset 'random:llava-smol'.*trained:llava-smol"):
        from edgevfm.export.checkpoint import load_checkpoint

        load_checkpoint("random:llava-smol")
