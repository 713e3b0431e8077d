"""Videos: frames sampled uniformly through the one image loader, retrieval text -> videos and
video -> texts for CLIP and BLIP-2 retrieval bundles (a video is the mean of its frames' features),
on clips generated here and encoded with the same library that reads them; a bad video is an
InputError (exit 3) that says what was expected."""

from __future__ import annotations

import re

import av  # the [video] extra (PyAV), part of the dev install
import numpy as np
import pytest
from PIL import Image

from edgevfm.runtime import InputError, load
from edgevfm.runtime import video as video_module
from edgevfm.runtime.cli import main
from edgevfm.benchmarks.video import SIZE, moving_square, write_video
from edgevfm.runtime.video import embed_videos, load_video, retrieve, video_embedding

from test_torch_free import _run_without_torch


FPS = 8


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {"red": write_video(folder / "red.mp4", moving_square((220, 30, 30))),
            "blue": write_video(folder / "blue.mkv", moving_square((30, 40, 220)), codec="ffv1")}


def test_frames_are_sampled_uniformly_through_the_image_loader(clips):
    frames = load_video(clips["blue"], frames=4)
    drawn = np.asarray(moving_square((30, 40, 220)), np.float32)
    assert len(frames) == 4 and all(f.mode == "RGB" and f.size == (SIZE, SIZE) for f in frames)
    # 16 frames over 2 s: the centres of four half-second spans are frames 2, 6, 10, 14 (each
    # decoded frame is nearest the one drawn there: YUV 4:2:0 moves colours by a few levels)
    nearest = [int(np.abs(drawn - np.asarray(f, np.float32)).mean(axis=(1, 2, 3)).argmin()) for f in frames]
    assert nearest == [2, 6, 10, 14]
    every = load_video(clips["blue"], every=0.5)
    assert [np.asarray(f).tobytes() for f in every] == [np.asarray(f).tobytes() for f in frames]


def test_a_red_square_finds_the_red_video(clip_shapes_bundle, clips):
    clip = load(clip_shapes_bundle, threads=1)
    hits = retrieve(clip, "a large red square", [clips["blue"], clips["red"]], k=2)
    assert hits[0].item == clips["red"] and hits[0].score > hits[1].score
    texts = ["a large blue square", "a large red square"]
    assert retrieve(clip, clips["red"], texts, k=1)[0].item == "a large red square"
    assert retrieve(clip, clips["blue"], texts, k=1)[0].item == "a large blue square"


def test_a_video_is_the_mean_of_its_frames_features(blip2_itm_bundle, clips):
    itm = load(blip2_itm_bundle, threads=1)
    frames = itm.image_features(load_video(clips["red"], frames=5))  # (5, queries, projection)
    mean = frames.mean(axis=0)
    expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(video_embedding(itm, clips["red"], frames=5), expected, atol=1e-6)
    # ranked as BLIP-2 ranks images: the best query's cosine with each text
    texts = ["a photo of a cat", "a red square", "a blue square"]
    hits = retrieve(itm, clips["red"], texts, k=3, frames=5)
    scores = (itm.text_features(texts) @ expected.T).max(axis=-1)
    assert [h.index for h in hits] == list(np.argsort(-scores, kind="stable"))


def test_a_video_is_decoded_once_per_process(clip_shapes_bundle, clips, monkeypatch):
    clip = load(clip_shapes_bundle, threads=1)
    first = embed_videos(clip, [clips["red"]], frames=3)
    monkeypatch.setattr(video_module, "load_video", lambda *a, **k: pytest.fail("decoded again"))
    np.testing.assert_array_equal(embed_videos(clip, [clips["red"]], frames=3), first)


def test_retrieve_videos_on_the_command_line(clip_shapes_bundle, clips, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, path in clips.items():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    assert main(["run", str(clip_shapes_bundle), "retrieve", "--query", "a large red square", "--videos", str(folder),
                 "-k", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().endswith("red.mp4") and "skipped" in out.err and "broken.mp4" in out.err
    assert main(["run", str(clip_shapes_bundle), "retrieve", "--query", str(folder / "red.mp4"), "--texts",
                 "a large blue square", "a large red square", "-k", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("a large red square")


def test_video_retrieval_runs_without_torch(clip_shapes_bundle, clips):
    result = _run_without_torch(f"""
        from edgevfm.runtime import load
        from edgevfm.runtime.video import retrieve
        clip = load({str(clip_shapes_bundle)!r}, threads=1)
        print(retrieve(clip, "a large red square", [{str(clips["blue"])!r}, {str(clips["red"])!r}], k=1)[0].index)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


# -- bad videos ------------------------------------------------------------------------------------
def _truncated(tmp_path, clips):
    data = clips["red"].read_bytes()
    return _write(tmp_path / "truncated.mp4", data[: len(data) // 2])


def _no_frames(tmp_path, clips):
    path = tmp_path / "empty.avi"  # AVI writes its header and index for a stream that never got a frame
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        container.start_encoding()
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


BAD = {
    "truncated": (_truncated, "cannot be read as a video|breaks off"),
    "no frames": (_no_frames, "has no frames"),
    "sound only": (lambda tmp, clips: _wav(tmp / "sound.mp4"), "holds no video stream"),
    "garbage": (lambda tmp, clips: _write(tmp / "noise.mkv", np.random.default_rng(0).bytes(4096)),
                "cannot be read as a video"),
    "not there": (lambda tmp, clips: tmp / "missing.mp4", "no video at"),
}


def _wav(path):
    """A second of silence: a container FFmpeg reads, with an audio stream and no video."""
    import wave

    with wave.open(str(path), "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(bytes(16000))
    return path


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_video_is_an_input_error_and_exit_3(kind, clip_shapes_bundle, clips, tmp_path, capsys):
    make, message = BAD[kind]
    path = make(tmp_path, clips)
    with pytest.raises(InputError, match=message):
        load_video(path)
    code = main(["run", str(clip_shapes_bundle), "retrieve", "--query", str(path), "--texts", "a red square"])
    assert code == 3 and re.search(message, capsys.readouterr().err)


def test_a_huge_frame_is_refused_before_decoding_it(clips, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # frames of 128 x 128
    with pytest.raises(InputError, match="a frame of the video has 128x128 = 16384 pixels"):
        load_video(clips["red"])


def test_a_clip_too_long_is_refused_before_decoding(clips, monkeypatch):
    monkeypatch.setattr(video_module, "MAX_SECONDS", 1.0)  # the clips last 2 s
    with pytest.raises(InputError, match="lasts 2 s: longer than the 1 s a clip may last"):
        load_video(clips["red"])


@pytest.mark.parametrize("options, message", [({"frames": 0}, "frames must be an integer from 1 to 256"),
                                              ({"frames": 1.5}, "frames must be an integer"),
                                              ({"every": -1}, "every must be a positive number")])
def test_bad_sampling_is_an_input_error(clips, options, message):
    with pytest.raises(InputError, match=message):
        load_video(clips["red"], **options)


def test_llava_answers_over_a_clips_frames_as_transformers_does(llava_qwen2_bundle, llava_qwen2_checkpoint, clips):
    """A video's frames as several images (the ChatML template of llava-interleave-qwen renders an
    image part per frame): greedy tokens equal transformers' generate on the same frames and ids."""
    import torch

    from edgevfm.runtime.families.llava import message
    from edgevfm.runtime.generate import generate
    from edgevfm.runtime.sampling import GenerationConfig

    llava = load(llava_qwen2_bundle, threads=1)
    frames = load_video(clips["red"], frames=3)
    prompt = llava.prompt([message("user", "What moves in this clip?", with_image=3)], llava.image_features(frames))
    assert sum(t == llava.image_token_id for t in prompt.ids) == 3 * llava.image_seq_length
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        out = llava_qwen2_checkpoint.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.from_numpy(llava.image_inputs(frames)),
            max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = out[0, ids.shape[1]:].tolist()
    ours = generate(llava.decoder, llava.embed, [prompt.embeds], [prompt.ids], GenerationConfig(max_new_tokens=12))
    assert ours.tokens[0] == expected
    # the pipeline's own call takes the video's path and samples the same frames
    said = llava.answer(clips["red"], "What moves in this clip?", frames=3, max_new_tokens=12, min_new_tokens=12,
                        stop_token_ids=())
    assert said == llava.decode_text(expected, llava.generation)


def test_llava_chats_about_a_video_on_the_command_line(llava_qwen2_bundle, clips, capsys):
    llava = load(llava_qwen2_bundle, threads=1)
    assert main(["run", str(llava_qwen2_bundle), "chat", str(clips["blue"]), "--frames", "2", "--prompt",
                 "What colour is it?", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == llava.answer(clips["blue"], "What colour is it?", frames=2,
                                                           max_new_tokens=6).strip()
    with pytest.raises(InputError, match="the list of images is empty"):
        llava.chat([])


def test_blip2_answers_over_a_clips_frames_from_their_concatenated_queries(blip2_bundle, blip2_checkpoint, clips):
    """BLIP-2's zero-shot video question answering: each frame's query features one after another,
    then the prompt; greedy tokens equal transformers' modules on the same frames (its language
    model's generate on those embeddings: BLIP-2's own generate takes one image per prompt)."""
    import torch

    blip2 = load(blip2_bundle, threads=1)
    frames = load_video(clips["red"], frames=3)
    question = blip2.manifest["prompt"]["question_template"].format("what moves?")
    model, tokenizer = blip2_checkpoint.model, blip2_checkpoint.assets["tokenizer"]
    with torch.no_grad():
        pixels = torch.from_numpy(blip2.image_inputs(frames))
        image = model.vision_model(pixel_values=pixels)[0]
        queries = model.qformer(query_embeds=model.query_tokens.expand(3, -1, -1), encoder_hidden_states=image)[0]
        features = model.language_projection(queries).reshape(1, -1, model.config.text_config.hidden_size)
        text = torch.tensor([tokenizer(question).input_ids])  # OPT's: BOS, then the question
        embeds = torch.cat([features, model.get_input_embeddings()(text)], dim=1)
        out = model.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2],
                                            dtype=torch.long), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                            eos_token_id=None, pad_token_id=0)
    expected = out[0].tolist()
    assert blip2.caption_tokens([clips["red"]], question, frames=3, max_new_tokens=8, min_new_tokens=8,
                                stop_token_ids=())[0] == expected
    prompt = blip2.prompt(clips["red"], question, frames=3)
    assert sum(t == blip2.image_token_id for t in prompt.ids) == 3 * blip2.image_seq_length


def test_ask_about_a_video_on_the_command_line(blip2_bundle, blip_vqa_bundle, clips, capsys):
    blip2 = load(blip2_bundle, threads=1)
    assert main(["run", str(blip2_bundle), "ask", str(clips["red"]), "what moves?", "--frames", "2"]) == 0
    assert capsys.readouterr().out.strip() == blip2.answer(clips["red"], "what moves?", frames=2)
    # BLIP looks at one image: a video is an input error that says what to use instead
    assert main(["run", str(blip_vqa_bundle), "ask", str(clips["red"]), "what moves?"]) == 3
    assert "looks at one image" in capsys.readouterr().err
