"""BLIP captioning (work in progress): captions equal transformers' generate token for token,
greedy and beam search, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from edgevfm.runtime import InputError, load
from edgevfm.runtime.image import preprocess


@pytest.fixture(scope="module")
def blip(blip_bundle):
    return load(blip_bundle, threads=1)


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3), dict(num_beams=3, no_repeat_ngram_size=2,
                                                                       length_penalty=0.6)],
                         ids=["greedy", "beams", "beams-ngram-penalty"])
def test_caption_equals_transformers(settings, blip, blip_checkpoint, photos):
    for image in photos[:2]:
        pixels = torch.from_numpy(preprocess([image], blip.manifest["preprocessing"]))
        with torch.no_grad():
            out = blip_checkpoint.model.generate(pixel_values=pixels, max_new_tokens=12, do_sample=False, **settings)
        expected = blip_checkpoint.assets["tokenizer"].decode(out[0], skip_special_tokens=True)
        assert blip.caption(image, max_new_tokens=12, **settings) == expected


def test_bad_caption_input_is_a_typed_error(blip, photos, tmp_path):
    with pytest.raises(InputError, match="a caption prompt must be a non-empty string or None"):
        blip.caption(photos[0], prompt="  ")
    with pytest.raises(InputError, match="over the model's context of 64"):
        blip.caption(photos[0], prompt="a photo of a cat " * 20)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="notes.png"):
        blip.caption(str(tmp_path / "notes.png"))


def test_caption_command(blip_bundle, blip, photos, tmp_path, capsys):
    from PIL import Image

    from edgevfm.runtime.cli import main

    Image.fromarray(photos[1]).save(tmp_path / "cat.png")
    assert main(["run", str(blip_bundle), "caption", str(tmp_path / "cat.png"), "--beams", "2",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == blip.caption(photos[1], max_new_tokens=8, num_beams=2) + "\n"
    with pytest.raises(SystemExit) as exited:
        main(["run", str(blip_bundle), "caption", str(tmp_path / "cat.png"), "--beams", "0"])
    assert exited.value.code == 2 and "--beams: expected an integer >= 1, found 0" in capsys.readouterr().err
    assert main(["run", str(blip_bundle), "caption", str(tmp_path / "missing.png")]) == 3


# -- visual question answering ------------------------------------------------------------------
@pytest.fixture(scope="module")
def vqa(blip_vqa_bundle):
    return load(blip_vqa_bundle, threads=1)


QUESTIONS = ("what colour is the cat?", "how many people are there?")


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3)], ids=["greedy", "beams"])
def test_answer_equals_transformers(settings, vqa, blip_vqa_checkpoint, photos):
    tokenizer = blip_vqa_checkpoint.assets["tokenizer"]
    for image in photos[:2]:
        pixels = torch.from_numpy(preprocess([image], vqa.manifest["preprocessing"]))
        for question in QUESTIONS:
            encoded = tokenizer(question, return_tensors="pt")
            with torch.no_grad():
                out = blip_vqa_checkpoint.model.generate(input_ids=encoded.input_ids, pixel_values=pixels,
                                                         attention_mask=encoded.attention_mask, max_new_tokens=6,
                                                         **settings)
            assert vqa.answer(image, question, max_new_tokens=6, **settings) == tokenizer.decode(
                out[0], skip_special_tokens=True)


def test_question_states_equal_the_pytorch_encoder(vqa, blip_vqa_checkpoint, photos):
    """The answer decoder attends to these: they differ by question and match PyTorch's."""
    import numpy as np

    model, tokenizer = blip_vqa_checkpoint.model, blip_vqa_checkpoint.assets["tokenizer"]
    embeds = vqa.image_embeds([photos[1]])
    states = []
    for question in QUESTIONS:
        ids = np.asarray([vqa.tokenizer.encode(question).ids])
        assert ids[0].tolist() == tokenizer(question).input_ids
        ours = vqa.run("question", {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": embeds})
        with torch.no_grad():
            theirs = model.text_encoder(input_ids=torch.from_numpy(ids), encoder_hidden_states=torch.from_numpy(embeds))[0]
        np.testing.assert_allclose(ours["question_embeds"], theirs.numpy(), atol=1e-4)
        states.append(ours["question_embeds"][0, 0])
    assert np.abs(states[0] - states[1]).max() > 1e-3


def test_each_bundle_does_its_task_and_says_so(blip, vqa, photos):
    from edgevfm.runtime.errors import UsageError

    with pytest.raises(UsageError, match="task is 'caption': to answer questions, export a BlipForQuestionAnswering"):
        blip.answer(photos[0], "what is it?")
    with pytest.raises(UsageError, match="task is 'vqa': to caption images, export a BlipForConditionalGeneration"):
        vqa.caption(photos[0])
    with pytest.raises(InputError, match="a question must be a non-empty string"):
        vqa.answer(photos[0], " ")
    with pytest.raises(InputError, match=r"the question has \d+ tokens: \d+ over the model's context of 64"):
        vqa.answer(photos[0], "the cat " * 60)


def test_ask_command(blip_vqa_bundle, vqa, photos, tmp_path, capsys):
    from PIL import Image

    from edgevfm.runtime.cli import main

    Image.fromarray(photos[1]).save(tmp_path / "cat.png")
    assert main(["run", str(blip_vqa_bundle), "ask", str(tmp_path / "cat.png"), QUESTIONS[0]]) == 0
    assert capsys.readouterr().out == vqa.answer(photos[1], QUESTIONS[0]) + "\n"


@pytest.mark.parametrize("which", ["caption", "vqa", "retrieval"])
def test_static_int8_calibrates_each_task(which, blip_bundle, blip_vqa_bundle, blip_itm_bundle, photos, tmp_path):
    """Calibration feeds every part as the runtime does (a VQA bundle's question part too)."""
    from edgevfm.quantize.api import quantize

    bundle = {"caption": blip_bundle, "vqa": blip_vqa_bundle, "retrieval": blip_itm_bundle}[which]
    out = load(quantize(bundle, "int8-static", tmp_path / "int8", samples=2, show_progress=False), threads=1)
    result = {"caption": lambda: out.caption(photos[1], max_new_tokens=4),
              "vqa": lambda: out.answer(photos[1], "what is it?"),
              "retrieval": lambda: str(out.match(photos[1], "a cat"))}[which]()
    assert isinstance(result, str)
    assert set(out.manifest["calibration"]["samples"]) == set(out.manifest["parts"])


@pytest.mark.parametrize("which", ["caption", "vqa", "retrieval"])
def test_static_int8_calibrates_on_a_data_sets_texts(which, blip_bundle, blip_vqa_bundle, blip_itm_bundle, tmp_path):
    """With --calib a data set, the text parts see its captions (retrieval: each image with its own;
    captioning: the decoder prefilled with the caption) or questions, not the family's own texts."""
    from edgevfm.benchmarks.scene_data import write
    from edgevfm.quantize.api import bundle_feeds, quantize
    from edgevfm.quantize.calibration import calibration_data
    from edgevfm.runtime import open_bundle

    bundle = {"caption": blip_bundle, "vqa": blip_vqa_bundle, "retrieval": blip_itm_bundle}[which]
    folder = write("vqa" if which == "vqa" else "captions", tmp_path / "scenes", 3, seed=1)
    data = calibration_data(folder, 2)
    texts = data.questions if which == "vqa" else data.captions
    pipeline = load(bundle, threads=1)
    feeds = bundle_feeds(open_bundle(bundle), folder, 2)
    if which == "caption":
        fed = [f["input_ids"][0].tolist() for f in feeds["text_decoder"]]
        assert fed == [pipeline.prompt_ids(t) for t in texts]
    else:
        part = {"vqa": "question", "retrieval": "text_proj"}[which]
        fed = [f["input_ids"][0].tolist() for f in feeds[part]]
        assert fed == [pipeline.tokenizer.encode(t).ids for t in texts]
    out = quantize(bundle, "int8-static", tmp_path / "int8", calib=folder, samples=2, show_progress=False)
    calibration = json.loads((out / "manifest.json").read_text())["calibration"]
    assert calibration["source"] == str(folder)
    assert calibration["texts"] == ("the data set's questions" if which == "vqa" else "the data set's captions")


@pytest.mark.parametrize("which", ["caption", "vqa", "retrieval"])
def test_dynamic_int8_quantizes_every_part_of_each_task_near_fp32(which, blip_bundle, blip_vqa_bundle,
                                                                    blip_itm_bundle, photos, tmp_path):
    """int8-dynamic (what measurement picked for every BLIP part) reaches each part (the manifest
    says so); the image embeddings and the decoder's first logits (retrieval: ITM and ITC) within a
    stated distance of FP32."""
    import numpy as np

    from edgevfm.quantize.api import quantize

    bundle = {"caption": blip_bundle, "vqa": blip_vqa_bundle, "retrieval": blip_itm_bundle}[which]
    fp32 = load(bundle, threads=1)
    out = load(quantize(bundle, "int8-dynamic", tmp_path / "int8", show_progress=False), threads=1)
    recipes = {name: step["recipe"] for name, step in out.manifest["recipe"]["parts"].items()}
    assert recipes == {name: "int8-dynamic" for name in out.manifest["parts"]}
    assert {part.precision for part in out.bundle.parts.values()} == {"int8"}

    def cosine(a, b):
        a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    image = photos[1]
    assert cosine(out.image_embeds([image]), fp32.image_embeds([image])) >= 0.99
    if which == "retrieval":
        ours, theirs = out.match(image, "a cat"), fp32.match(image, "a cat")
        assert abs(ours["itm"] - theirs["itm"]) < 0.05 and abs(ours["itc"] - theirs["itc"]) < 0.05
        return
    first = []
    for p in (fp32, out):
        decoder = p.question_decoder(image, "what is it?") if which == "vqa" else p.image_decoder([image])
        ids = np.asarray([p.prompt_ids(None)], np.int64)
        first.append(decoder.step(ids, np.ones_like(ids), np.zeros_like(ids), decoder.empty_cache(1))[0])
    assert cosine(*first) >= 0.99


# -- image-text matching and retrieval ------------------------------------------------------------
@pytest.fixture(scope="module")
def itm(blip_itm_bundle):
    return load(blip_itm_bundle, threads=1)


TEXTS = ("a photo of a cat", "an astronaut in a space suit")


def test_match_equals_the_pytorch_heads(itm, blip_itm_checkpoint, photos):
    model, tokenizer = blip_itm_checkpoint.model, blip_itm_checkpoint.assets["tokenizer"]
    seen = set()
    for image in photos[:2]:
        pixels = torch.from_numpy(preprocess([image], itm.manifest["preprocessing"]))
        for text in TEXTS:
            encoded = tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                logits = model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask, pixel_values=pixels)
                cosine = model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
                               pixel_values=pixels, use_itm_head=False).itm_score[0, 0].item()
            ours = itm.match(image, text)
            assert ours["itm"] == pytest.approx(torch.softmax(logits.itm_score, -1)[0, 1].item(), abs=1e-5)
            assert ours["itc"] == pytest.approx(cosine, abs=1e-5)
            seen.add(round(ours["itc"], 4))
    assert len(seen) == 4  # every pair scores differently: the comparison is not of constants


def test_retrieve_both_ways_ranks_by_itc(itm, photos, tmp_path):
    from PIL import Image

    images = photos[:3]
    ranked = itm.retrieve(TEXTS[0], images, k=3)
    cosines = [itm.match(image, TEXTS[0])["itc"] for image in images]
    assert [m.index for m in ranked] == sorted(range(3), key=lambda i: -cosines[i])
    assert [m.score for m in ranked] == pytest.approx(sorted(cosines, reverse=True), abs=1e-6)
    texts = itm.retrieve(photos[0], list(TEXTS), k=1)
    assert len(texts) == 1 and texts[0].item == TEXTS[texts[0].index]
    Image.fromarray(photos[0]).save(tmp_path / "query.png")  # a path is an image query, as for CLIP
    assert itm.retrieve(str(tmp_path / "query.png"), list(TEXTS), k=2) == itm.retrieve(photos[0], list(TEXTS), k=2)
    with pytest.raises(InputError, match="k must be a positive integer"):
        itm.retrieve(TEXTS[0], images, k=0)
    with pytest.raises(InputError, match="a text must be a non-empty string"):
        itm.match(photos[0], "")


def test_retrieve_command_ranks_a_folder_by_itc(blip_itm_bundle, itm, photos, tmp_path, capsys):
    """BLIP's retrieval bundles answer CLIP's retrieve task: text -> images and image -> texts."""
    from PIL import Image

    from edgevfm.runtime.cli import main

    for i, photo in enumerate(photos[:3]):
        Image.fromarray(photo).save(tmp_path / f"{i}.png")
    assert main(["run", str(blip_itm_bundle), "retrieve", "--query", TEXTS[0], "--images", str(tmp_path),
                 "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = itm.retrieve(TEXTS[0], photos[:3], k=2)
    assert [line.split()[1] for line in lines] == [str(tmp_path / f"{m.index}.png") for m in expected]
    assert [float(line.split()[0]) for line in lines] == pytest.approx([m.score for m in expected], abs=1e-4)
    assert main(["run", str(blip_itm_bundle), "retrieve", "--query", str(tmp_path / "0.png"), "--texts",
                 *TEXTS]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(TEXTS)


def test_match_command_and_the_other_tasks_refused(blip_itm_bundle, itm, blip, photos, tmp_path, capsys):
    from PIL import Image

    from edgevfm.runtime.cli import main
    from edgevfm.runtime.errors import UsageError

    Image.fromarray(photos[1]).save(tmp_path / "cat.png")
    assert main(["run", str(blip_itm_bundle), "match", str(tmp_path / "cat.png"), TEXTS[0]]) == 0
    scores = itm.match(photos[1], TEXTS[0])
    assert capsys.readouterr().out == f"itm {scores['itm']:.4f}  itc {scores['itc']:.4f}\n"
    with pytest.raises(UsageError, match="task is 'retrieval': to caption images"):
        itm.caption(photos[0])
    with pytest.raises(UsageError, match="task is 'caption': to match images and texts, export a "
                                         "BlipForImageTextRetrieval"):
        blip.match(photos[0], TEXTS[0])
