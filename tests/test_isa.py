"""INT8 on every x86 CPU. Without VNNI (AVX2, AVX-512F), 8-bit dot products add pairs of u8 x s8
products in 16 bits and saturate; edgevfm's INT8 recipes are saturation-safe, a bundle records
the CPU it was quantized on, and a full-range part warns where it would saturate.

The other kind of CPU is run for real where it can be: QEMU's Haswell model (``qemu-x86_64 -cpu
Haswell-v4``: AVX2 and FMA, no AVX-512, no VNNI) runs the runtime's integer kernels instruction
for instruction; on tiny CLIP it gives the figures an AVX2-only machine gave, to the digit
(docs/int8-on-every-cpu.md). On a CPU without VNNI the native runs are that side already.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from edgevfm.runtime import cpu, load
from edgevfm.runtime.bundle import open_bundle, write_manifest
from edgevfm.runtime.errors import SaturationWarning

from test_quantize import TINY_MIN_COSINE

INT8_RECIPES = ("int8-dynamic", "int8-static", "ov-int8", "ov-int8-plain")
TEXTS = ["a photo of a cat", "an astronaut", "a cup of coffee", "gravel on the ground"]
QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                                reason="QEMU's user-mode emulator is not installed (apt-get install qemu-user; "
                                       ".ci/run installs it): the AVX2-only side is not run here")
# what the emulated process measures: each bundle's mean cosine to the FP32 bundle, and its warnings
_MEASURE = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    from edgevfm.runtime import cpu, load
    from edgevfm.runtime.tensorrt import simulation_providers
    photos = [np.asarray(p) for p in np.load(sys.argv[1])["photos"]]
    texts, fp32_path, paths = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:]
    fp32 = load(fp32_path, threads=1)
    image, text = fp32.embed_images(photos), fp32.embed_texts(texts)
    found = {"isa": cpu.isa_label(), "flags": list(cpu.instruction_sets()), "bundles": {}}
    for path in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bundle = load(path, threads=1, providers=simulation_providers(path))
        found["bundles"][path] = {
            "image": float((image * bundle.embed_images(photos)).sum(1).mean()),
            "text": float((text * bundle.embed_texts(texts)).sum(1).mean()),
            "warnings": [type(w.message).__name__ for w in caught]}
    print(json.dumps(found))
""")


def _measure(bundles, fp32, photos, tmp_path, emulated: bool) -> dict:
    np.savez(tmp_path / "photos.npz", photos=np.stack([p for p in photos if p.shape == photos[0].shape][:4]))
    command = [sys.executable, "-c", _MEASURE, str(tmp_path / "photos.npz"), json.dumps(TEXTS), str(fp32),
               *map(str, bundles)]
    if emulated:
        command = [QEMU, "-cpu", "Haswell-v4", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def full_range_bundle(clip_bundle, tmp_path_factory):
    """random:clip-tiny in the full-range U8S8 static INT8 that edgevfm made before (the unlisted
    recipe int8-static-u8s8): fast on VNNI, saturating without it."""
    from edgevfm.quantize.api import quantize

    return quantize(clip_bundle, "int8-static-u8s8", tmp_path_factory.mktemp("full-range") / "bundle", samples=8,
                    show_progress=False)


@needs_qemu
def test_the_emulated_cpu_has_avx2_without_vnni(tmp_path):
    done = subprocess.run([QEMU, "-cpu", "Haswell-v4", sys.executable, "-c",
                           "from edgevfm.runtime import cpu; print(cpu.isa_label(), cpu.int8_saturates(), "
                           "' '.join(cpu.instruction_sets()))"], capture_output=True, text=True, timeout=300)
    assert done.stdout.split(None, 4) == ["AVX2", "(no", "VNNI)", "True", "avx2 fma\n"], done.stderr[-2000:]


@needs_qemu
def test_every_int8_recipe_keeps_its_floor_without_vnni(clip_bundle, clip_recipe_bundles, full_range_bundle,
                                                        photos, tmp_path):
    """Each INT8 recipe's bundle, made on this machine, gives within 2e-3 the cosine here and on the
    AVX2-only CPU, and keeps its floor on both; the full-range bundle (the control: it shows that
    the emulator saturates as the hardware does) loses on AVX2 what it keeps on VNNI, and warns
    there only."""
    bundles = [clip_recipe_bundles[r] for r in INT8_RECIPES] + [full_range_bundle]
    native = _measure(bundles, clip_bundle, photos, tmp_path, emulated=False)
    avx2 = _measure(bundles, clip_bundle, photos, tmp_path, emulated=True)
    assert avx2["isa"] == "AVX2 (no VNNI)"
    for recipe, path in zip(INT8_RECIPES, map(str, bundles)):
        here, there = native["bundles"][path], avx2["bundles"][path]
        for tower in ("image", "text"):
            assert there[tower] >= TINY_MIN_COSINE[recipe], (recipe, tower, here, there)
            assert abs(there[tower] - here[tower]) <= 2e-3, (recipe, tower, here, there)
        assert there["warnings"] == here["warnings"] == [], recipe
    control_here, control_there = native["bundles"][str(full_range_bundle)], avx2["bundles"][str(full_range_bundle)]
    assert control_there["warnings"] == ["SaturationWarning"]
    if not cpu.int8_saturates():  # here is VNNI: the control must lose on the emulated AVX2 side
        assert control_here["warnings"] == []
        assert control_there["text"] < control_here["text"] - 5e-3, (control_here, control_there)


@needs_qemu
def test_the_tensorrt_simulation_computes_the_same_on_every_cpu(clip_bundle, trt_bundles, photos, tmp_path):
    """A trt-int8 bundle's CPU simulation runs its Q/DQ pairs unfused (float MatMuls on the
    dequantized values, as an engine computes them): the AVX2-only CPU gives the cosines this CPU
    does, to float rounding, without a warning; nothing saturates (TensorRT's own INT8 on a GPU
    does not either)."""
    bundle = trt_bundles["clip_bundle", "trt-int8"]
    native = _measure([bundle], clip_bundle, photos, tmp_path, emulated=False)
    avx2 = _measure([bundle], clip_bundle, photos, tmp_path, emulated=True)
    assert avx2["isa"] == "AVX2 (no VNNI)"
    here, there = native["bundles"][str(bundle)], avx2["bundles"][str(bundle)]
    for tower in ("image", "text"):
        assert there[tower] >= TINY_MIN_COSINE["int8-static"] and abs(there[tower] - here[tower]) <= 1e-4, (here, there)
    assert here["warnings"] == there["warnings"] == []


def test_a_full_range_part_warns_once_where_int8_saturates(full_range_bundle, clip_recipe_bundles, monkeypatch):
    """The warning follows the CPU's flags (AVX2: warns, VNNI: silent), comes once per bundle, and
    never for a saturation-safe bundle; OpenVINO parts also follow ONEDNN_MAX_CPU_ISA."""
    from edgevfm.runtime import pipeline

    monkeypatch.setattr(pipeline, "_warned", set())
    for flags, warns in ((("avx2", "fma"), True), (("avx2", "avx512f", "avx512_vnni"), False),
                         (("avx2", "avx_vnni"), False)):
        monkeypatch.setattr(cpu, "instruction_sets", lambda flags=flags: flags)
        pipeline._warned.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load(full_range_bundle, threads=1)
            load(full_range_bundle, threads=1)
            load(clip_recipe_bundles["int8-static"], threads=1)
        found = [w for w in caught if issubclass(w.category, SaturationWarning)]
        assert len(found) == warns, (flags, [str(w.message) for w in caught])
        if warns:
            message = str(found[0].message)
            assert "parts ['text', 'vision'] multiply full-range INT8 weights" in message and "AVX2 (no VNNI)" in message
            assert "Quantize the FP32 bundle again" in message
    monkeypatch.setattr(cpu, "instruction_sets", lambda: ("avx2", "avx512f", "avx512_vnni"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.int8_saturates("openvino") and not cpu.int8_saturates("onnxruntime")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert not cpu.int8_saturates("openvino")


def test_a_bundle_of_an_older_edgevfm_is_judged_by_its_recipe(clip_recipe_bundles, tmp_path, monkeypatch):
    """Bundles made before parts said ``int8_activations``: int8-static (full range then) warns on
    AVX2; a decoder whose ov-int8 kept activations in float does not."""
    from edgevfm.runtime import pipeline

    folder = shutil.copytree(clip_recipe_bundles["int8-static"], tmp_path / "old")
    manifest = json.loads((folder / "manifest.json").read_text())
    for part in manifest["parts"].values():
        part.pop("int8_activations")
    manifest.pop("quantized_on")
    write_manifest(folder, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    monkeypatch.setattr(cpu, "instruction_sets", lambda: ("avx2", "fma"))
    assert pipeline.saturating_parts(open_bundle(folder)) == {"text": "onnxruntime", "vision": "onnxruntime"}
    manifest["recipe"]["parts"]["text"]["activations"] = "float"
    write_manifest(folder, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    assert pipeline.saturating_parts(open_bundle(folder)) == {"vision": "onnxruntime"}


def test_a_bundle_records_the_cpu_it_was_quantized_on(clip_recipe_bundles):
    for recipe in INT8_RECIPES:
        manifest = open_bundle(clip_recipe_bundles[recipe]).manifest
        assert manifest["quantized_on"]["isa"] == cpu.isa_label()
        assert manifest["quantized_on"]["instruction_sets"] == list(cpu.instruction_sets())
        assert {p.get("int8_activations") for p in manifest["parts"].values()} == {"saturation-safe"}, recipe


def test_a_trained_preset_is_judged_on_its_task_on_both_cpus(clip_shapes_bundle, tmp_path):
    """python -m edgevfm.benchmarks.isa on a preset trained on the scenes: each INT8 row's task
    scores on the first held-out scenes, here and (with QEMU) on the AVX2-only CPU, their drop below
    the FP32 bundle's on the same CPU, and the verdict against the family's task goals (CLIP's: at
    most one point of zero-shot top-1)."""
    from edgevfm.benchmarks import isa
    from edgevfm.benchmarks.scene_data import calibration_set
    from edgevfm.quantize.api import quantize

    int8 = quantize(clip_shapes_bundle, "int8-static", tmp_path / "int8-static", show_progress=False, samples=8,
                    calib=calibration_set("clip", tmp_path / "calib"))
    assert isa.main([str(clip_shapes_bundle), str(int8), "--scenes", "12", "--images", "1", "-o", str(tmp_path / "r")]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    page = (tmp_path / "r" / "report.md").read_text()
    assert results["data"].startswith("the first 12 held-out scenes (`edgevfm scenes DIR --kind classify --count 12")
    sides = ["native"] + (["emulated"] if QEMU and platform.machine() == "x86_64" else [])
    for side in sides:
        fp32, row = results[side]["fp32_task"], results[side]["rows"]["int8-static"]
        assert 0 < fp32["top1_accuracy"] <= 1
        assert row["top1_accuracy drop"] == pytest.approx(fp32["top1_accuracy"] - row["top1_accuracy"], abs=1e-12)
    if "emulated" in results:
        assert results["emulated"]["isa"] == "AVX2 (no VNNI)"
    assert "Floor: the family's task goals, as its bench report states them (top1_accuracy drop <= 0.01)." in page
    header = next(line for line in page.splitlines() if line.startswith("| bundle |"))
    assert f"| top1_accuracy ({sides[0]}) |" in header and f"| top1_accuracy drop ({sides[0]}) |" in header
    row = next(line for line in page.splitlines() if line.startswith("| int8-static |")).strip("| ").split(" | ")
    want = ["holds" if results[s]["rows"]["int8-static"]["top1_accuracy drop"] <= 0.01 else "**below**" for s in sides]
    assert row[-len(sides):] == want, row
