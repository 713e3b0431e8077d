"""Every task of ``edgevfm run`` with its defaults, on the tiny presets: a default never fails.
Generation without ``--max-new-tokens`` ends where the model's context does (said on stderr); an
explicit limit that cannot fit is still the clear error."""

from __future__ import annotations

import pytest
from PIL import Image

from edgevfm.runtime import load
from edgevfm.runtime.cli import main
from edgevfm.runtime import families  # noqa: F401  (registers the tasks)
from edgevfm.runtime.tasks import TASKS

LONG = "Describe this picture in every detail: the colours, the shapes, the light and what each thing is doing."
# each task with only what it requires, on a bundle of each family that answers it
RUNS = {
    "classify": [("clip_bundle", ["{image}", "--labels", "a cat", "a dog"])],
    "retrieve": [("clip_bundle", ["--query", "a cat", "--images", "{folder}"]),
                 ("blip_itm_bundle", ["--query", "a cat", "--images", "{folder}"])],
    "caption": [("blip_bundle", ["{image}"]), ("blip2_bundle", ["{image}"])],
    "ask": [("blip_vqa_bundle", ["{image}", "what is it?"]), ("blip2_bundle", ["{image}", "what is it?"])],
    "match": [("blip_itm_bundle", ["{image}", "a cat"])],
    "chat": [("llava_bundle", ["{image}", "--prompt", LONG])],
    "segment": [("sam_bundle", ["{image}", "--point", "10,10", "--out", "{tmp}/mask.png"])],
    "masks": [("sam_bundle", ["{image}", "--out", "{tmp}/masks", "--points-per-side", "2"])],
}


def test_every_task_is_tried():
    assert sorted(RUNS) == sorted(name for name, _ in TASKS.items())


@pytest.mark.parametrize("task, fixture, arguments", [(t, f, a) for t, runs in RUNS.items() for f, a in runs])
def test_a_task_with_its_defaults_answers(task, fixture, arguments, request, photos, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, photo in enumerate(photos[:2]):
        Image.fromarray(photo).save(folder / f"{i}.png")
    filled = [a.format(image=folder / "0.png", folder=folder, tmp=tmp_path) for a in arguments]
    assert main(["run", str(request.getfixturevalue(fixture)), task, *filled]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()


def test_chat_without_a_limit_ends_at_the_context(llava_bundle, photos, capsys):
    """The tiny LLaVA's context is 512: after a long prompt the default of 256 new tokens does not
    fit, so the answer runs to the context's end and is marked cut; an explicit 256 is refused with
    the fix."""
    pipeline = load(llava_bundle, threads=1)
    long = " ".join([LONG] * 6)
    chat = pipeline.chat(photos[0], min_new_tokens=10_000)  # no stop token: run to the limit
    answer = chat.send(long)
    assert isinstance(answer, str) and chat.finish_reason == "length"
    prompt = len(pipeline.prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": long}]}],
                                 pipeline.image_features([photos[0]])).ids)
    assert prompt < len(chat.session.ids) <= pipeline.context_length
    assert prompt + 256 > pipeline.context_length, "the test needs a prompt the default does not fit"
    from edgevfm.runtime.errors import InputError

    with pytest.raises(InputError, match=r"over the model.s context of 512; .* \(or leave it out"):
        pipeline.chat(photos[0]).send(long, max_new_tokens=256)
    assert main(["run", str(llava_bundle), "chat", "--prompt", long, "--max-new-tokens", "256"]) == 3
    assert "over the model's context of 512" in capsys.readouterr().err


def test_export_help_lists_every_preset(capsys):
    from edgevfm.export.spec import FAMILIES

    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for family, cls in FAMILIES.items():
        for preset in cls.presets.values():
            assert f"  {preset.prefix}{preset.name} ({family}): {preset.description}" in shown


def test_ask_on_a_captioning_blip_names_the_vqa_preset(blip_bundle, photos, tmp_path, capsys):
    Image.fromarray(photos[0]).save(tmp_path / "cat.png")
    assert main(["run", str(blip_bundle), "ask", str(tmp_path / "cat.png"), "what is it?"]) == 2  # a usage error
    assert "export a BlipForQuestionAnswering, e.g. Salesforce/blip-vqa-base (offline: the preset " \
           "trained:blip-vqa-shapes or random:blip-vqa-tiny)" in capsys.readouterr().err
