"""Hostile: checkpoints. A folder that lacks what the family needs, a malformed config or a
``--family`` that does not fit is refused before anything is written; presets are the same bytes in
every process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from edgevfm.export.api import export
from edgevfm.export.checkpoint import load_checkpoint
from edgevfm.export.families.clip import check_tokenizer
from edgevfm.runtime.cli import main
from edgevfm.export.errors import CheckpointError


@pytest.fixture(scope="module")
def clip_folder(clip_checkpoint, tmp_path_factory):
    """random:clip-tiny saved as users save a checkpoint, without its tokenizer."""
    folder = tmp_path_factory.mktemp("ckpt") / "clip"
    clip_checkpoint.model.save_pretrained(folder)
    clip_checkpoint.assets["image_processor"].save_pretrained(folder)
    return folder


def test_folder_without_its_tokenizer_is_refused(clip_folder, tmp_path, capsys):
    """Before, it exported with exit 0 into a bundle whose tokenizer gave every label the same ids."""
    out = tmp_path / "bundle"
    assert main(["export", str(clip_folder), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "lacks tokenizer.json or vocab.json, which the clip family needs" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_tokenizer_that_cannot_tell_texts_apart_is_refused(clip_folder):
    from transformers import CLIPTokenizer

    degenerate = CLIPTokenizer.from_pretrained(clip_folder)  # what transformers builds without the files
    with pytest.raises(CheckpointError, match="maps different texts to the same ids"):
        check_tokenizer(degenerate, str(clip_folder))


def test_folder_with_its_tokenizer_exports(clip_checkpoint, clip_folder, tmp_path):
    import shutil

    folder = shutil.copytree(clip_folder, tmp_path / "complete")
    clip_checkpoint.assets["tokenizer"].save_pretrained(folder)
    assert (export(str(folder), tmp_path / "bundle", show_progress=False) / "manifest.json").is_file()


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "has no model_type string"),
    ('{"vision_config": {}}', "has no model_type string"),
    ('{"model_type": 5}', "has no model_type string"),
    ("{not json", "is not valid JSON"),
])
def test_malformed_config(tmp_path, config, message):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(tmp_path / "ckpt"))


def test_family_that_does_not_fit_the_checkpoint(clip_folder, tmp_path, capsys):
    assert main(["export", str(clip_folder), "--family", "sam", "-o", str(tmp_path / "b")]) == 3
    err = capsys.readouterr().err
    assert "--family sam does not fit" in err and "which is a clip checkpoint" in err
    with pytest.raises(CheckpointError, match="--family clip does not fit 'random:sam-tiny', which is a sam"):
        load_checkpoint("random:sam-tiny", family="clip")


def test_checkpoint_folder_is_never_the_output(clip_checkpoint, clip_folder, tmp_path, capsys):
    import shutil

    folder = shutil.copytree(clip_folder, tmp_path / "ckpt")
    clip_checkpoint.assets["tokenizer"].save_pretrained(folder)
    before = sorted(p.name for p in folder.iterdir())
    assert main(["export", str(folder), "-o", str(folder), "--force"]) == 3
    assert "is the input" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before


FINGERPRINT = textwrap.dedent("""
    import hashlib, sys
    from edgevfm.export.checkpoint import load_checkpoint
    c = load_checkpoint(sys.argv[1])
    weights = hashlib.sha256()
    for name, tensor in sorted(c.model.state_dict().items()):
        weights.update(name.encode()); weights.update(tensor.numpy().tobytes())
    tok = c.assets.get("tokenizer")
    print(weights.hexdigest(), hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest() if tok else "-")
""")


@pytest.mark.parametrize("preset", ["random:clip-tiny", "random:sam-tiny"])
def test_preset_is_the_same_bytes_in_every_process(preset):
    """Before, CLIP presets trained their BPE merges with tokenizers' trainer, whose ties fall in
    hash order: three processes gave three tokenizers, and a tolerance test failed on a clean clone."""
    runs = [subprocess.run([sys.executable, "-c", FINGERPRINT, preset], capture_output=True, text=True, timeout=300,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)})
            for seed in (1, 2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.split()) == 2
