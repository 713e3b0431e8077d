"""The CLI: real --help for every subcommand, and each one driving its typed function."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgevfm.runtime.cli import build_parser, main

SUBCOMMANDS = ["export", "quantize", "check", "run", "bench", "scenes", "info", "engines", "demo", "serve", "batch"]  # check, engines: tests/test_tensorrt_*.py; scenes: tests/test_scenes.py; serve: tests/test_serve.py; batch: tests/test_batch.py


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: edgevfm {command}" in out and "--help" in out


def test_every_subcommand_is_tested():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    assert sorted(choices) == sorted(SUBCOMMANDS)


def test_export_quantize_info_run(tmp_path, photos, capsys):
    bundle, quantized = tmp_path / "fp32", tmp_path / "int8"
    assert main(["export", "random:clip-tiny", "-o", str(bundle)]) == 0
    assert main(["quantize", str(bundle), "--recipe", "int8-dynamic", "-o", str(quantized)]) == 0
    capsys.readouterr()
    assert main(["info", str(quantized)]) == 0
    info = capsys.readouterr().out
    assert "clip bundle (format 1), recipe int8-dynamic" in info and "part vision: int8" in info

    images = tmp_path / "images"
    images.mkdir()
    for i, photo in enumerate(photos[:3]):
        Image.fromarray(photo).save(images / f"{i}.png")
    assert main(["run", str(quantized), "classify", str(images / "1.png"), "--labels", "a cat", "a dog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and {line.split()[1] for line in lines} == {"a"}
    assert abs(sum(float(line.split()[0]) for line in lines) - 1.0) < 1e-3

    assert main(["run", str(quantized), "retrieve", "--query", "a cat", "--images", str(images), "-k", "2"]) == 0
    hits = capsys.readouterr().out.splitlines()
    assert len(hits) == 2 and all(str(images) in hit for hit in hits)

    assert main(["run", str(quantized), "retrieve", "--query", str(images / "1.png"), "--texts", "a cat", "a dog"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_bad_input_is_one_line_with_exit_code_3(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: invalid bundle") and "no manifest.json" in err
    assert main(["export", "random:nope", "-o", str(tmp_path / "b")]) == 3
    assert "unknown preset 'random:nope'" in capsys.readouterr().err


def test_output_folder_with_a_bundle_needs_force(clip_bundle, capsys):
    assert main(["export", "random:clip-tiny", "-o", str(clip_bundle)]) == 3
    assert "--force" in capsys.readouterr().err
    manifest = json.loads((clip_bundle / "manifest.json").read_text())
    assert manifest["source"]["id"] == "random:clip-tiny"


def test_segment_writes_mask_and_overlay(sam_bundle, photos, tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(image)
    out = tmp_path / "out" / "mask.png"
    assert main(["run", str(sam_bundle), "segment", str(image), "--point", "220,150", "--negative", "40,30",
                 "--box", "80,20,330,290", "--out", str(out)]) == 0
    assert "predicted IoU" in capsys.readouterr().out
    mask = Image.open(out)
    overlay = Image.open(out.with_name("mask.overlay.png"))
    assert mask.mode == "L" and mask.size == overlay.size == (451, 300) and overlay.mode == "RGB"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_masks_writes_rle_json(sam_bundle, photos, tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(image)
    assert main(["run", str(sam_bundle), "masks", str(image), "--points-per-side", "4", "--pred-iou-thresh", "-1000",
                 "--stability-thresh", "0", "--out", str(tmp_path / "masks")]) == 0
    records = json.loads((tmp_path / "masks" / "masks.json").read_text())
    assert records and records[0]["segmentation"]["size"] == [300, 451]
    assert (tmp_path / "masks" / "overlay.png").is_file() and (tmp_path / "masks" / "mask_000.png").is_file()


def test_task_of_another_family_is_refused(sam_bundle, clip_bundle, tmp_path, capsys):
    assert main(["run", str(sam_bundle), "classify", "x.png", "--labels", "a"]) == 3
    assert "task 'classify' answers clip bundles" in capsys.readouterr().err
    assert main(["run", str(clip_bundle), "segment", "x.png", "--point", "1,1"]) == 3
    assert "its tasks are classify, retrieve" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: checked before anything is loaded
        main(["run", str(sam_bundle), "segment", "x.png", "--point", "1"])
    assert exit_info.value.code == 2
    assert "X,Y must be 2 comma-separated finite numbers, found '1'" in capsys.readouterr().err


def test_the_demo_summary_says_each_models_time_and_the_machine(tmp_path):
    """demo.md: one row per model with its seconds per step and their total, the applications'
    seconds after them, the whole run in minutes, the command that makes it again and the CPU's
    INT8 arithmetic."""
    import json

    from edgevfm.benchmarks.demo import demo_command, write_summary
    from edgevfm.runtime.cpu import isa_label

    timings = [{"model": "random:clip-tiny", "family": "clip", "bundles": 5,
                "seconds": {"export": 4.2, "quantize": 30.4, "run": 1.0, "bench": 20.6}}]
    command = demo_command(tmp_path / "out", ["random:clip-tiny"], None, None, 2, False, 1)
    assert command == f"edgevfm demo -o {tmp_path / 'out'} --model random:clip-tiny --threads 2 --rounds 1"
    page = write_summary(tmp_path / "report", timings, 61.0, command, 2, applications_s=4.6).read_text()
    assert "| random:clip-tiny | clip | 5 | 4 | 30 | 1 | 21 | 56 |" in page
    assert "(video retrieval, text prompts, edgevfm serve, edgevfm batch): 5 s." in page
    assert "Total: 1.0 minutes." in page and f"Produced by `{command}`" in page
    assert f"INT8 arithmetic: {isa_label()}" in page
    saved = json.loads((tmp_path / "report" / "demo.json").read_text())
    assert saved["models"] == timings and (saved["applications_s"], saved["total_s"]) == (4.6, 61.0)


def test_the_demo_headline_names_what_quantizing_missed_when_nothing_stays_within():
    """The console's one line per model: the fastest bundle within the family's floors; where that
    is the FP32 bundle, also the fastest quantized one outside them, its speed-up (per part where
    there are several) and its figures (llava-smol's llava-int4 misses the 0.05 agreement floor)."""
    from edgevfm.benchmarks.demo import headline
    from edgevfm.benchmarks.families import BENCH

    def row(name, recipe, ms, agreement):
        return {"kind": "bundle", "name": name, "recipe": recipe, "latency_ms": {"llm": {"p50": ms}},
                "accuracy": {"next_token_top1_agreement": agreement}}

    rows = [row("onnxruntime fp32", None, 20.0, 1.0), row("onnxruntime llava-int4", "llava-int4", 8.0, 0.871),
            row("onnxruntime llava-int8", "llava-int8", 12.5, 0.96)]
    # one quantized bundle within: it is named, nothing else
    assert headline({"rows": rows}, BENCH.get("llava")) == \
        "fastest within the floors (drop <= 0.050): onnxruntime llava-int8, 1.60x the FP32 bundle's speed"
    rows[2]["accuracy"]["next_token_top1_agreement"] = 0.93
    assert headline({"rows": rows}, BENCH.get("llava")) == (
        "fastest within the floors (drop <= 0.050): onnxruntime fp32, 1.00x the FP32 bundle's speed; "
        "the fastest outside them: onnxruntime llava-int4, 2.50x, drop 0.129")
    for r, prefill in zip(rows, (300.0, 305.0, 320.0)):
        r["latency_ms"]["prefill"] = {"p50": prefill}
    assert headline({"rows": rows}, BENCH.get("llava")).endswith(
        "the fastest outside them: onnxruntime llava-int4, llm 2.50x, prefill 0.98x, drop 0.129")
