"""The OpenVINO recipes on the generating families (LLaVA, BLIP, BLIP-2 with OPT and with T5): the
generation engine drives OpenVINO decoder parts with the KV cache inside the compiled model (stateful); ov-fp32 generates what
the FP32 bundle generates, token for token (greedy, beams, a padded batch); every recipe's parts stay
within a stated tolerance of FP32's on the family's own feeds; a builder graph is refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest

from edgevfm.quantize.api import quantize
from edgevfm.quantize.calibration import calibration_images
from edgevfm.quantize.families import CALIBRATION
from edgevfm.runtime import load
from edgevfm.quantize.errors import QuantizeError

OV_RECIPES = ("ov-fp32", "ov-bf16", "ov-int8", "ov-int4", "ov-int8-plain")
FAMILY_BUNDLES = ("llava_plain_bundle", "blip_bundle", "blip2_bundle", "blip2_t5_bundle")
# Mean cosine of every float output of every part to FP32's, on the family's calibration feeds
# (prefill for decoders), over tiny random models (hidden 32-64); the floors hold on both kinds of
# CPU. Worst part of the four bundles on an AVX-512 VNNI/BF16 machine: ov-fp32 1.0000, ov-bf16
# 0.9997, ov-int8 0.9985, ov-int4 0.954, ov-int8-plain 0.996 (all the tiny T5's). On an AVX2-only
# CPU (QEMU's Haswell model, docs/int8-on-every-cpu.md) the tiny T5's INT8 parts lose more, with 7-bit
# weights everywhere: ov-int8 0.966 (its encoder), ov-int8-plain 0.912 (its decoder); every other
# part stays within 2e-3 of VNNI (benchmarks/reports/int8-isa). ov-bf16 runs FP32 there.
PART_MIN_COSINE = {"ov-fp32": 0.99999, "ov-bf16": 0.998, "ov-int8": 0.95, "ov-int4": 0.90, "ov-int8-plain": 0.88}


@pytest.fixture(scope="module")
def ov_bundles(request, tmp_path_factory):
    found = {}
    for fixture in FAMILY_BUNDLES:
        source = request.getfixturevalue(fixture)
        root = tmp_path_factory.mktemp(f"ov-{fixture}")
        found[fixture] = {"fp32": source} | {r: quantize(source, r, root / r, samples=2, show_progress=False)
                                             for r in OV_RECIPES}
    return found


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


@pytest.mark.parametrize("fixture", FAMILY_BUNDLES)
def test_every_recipe_keeps_every_part_close(fixture, ov_bundles, photos):
    bundles = ov_bundles[fixture]
    fp32 = load(bundles["fp32"], threads=1)
    feeds = CALIBRATION.get(fp32.bundle.family)(fp32, calibration_images(None, 2), 2)
    found = {}
    for recipe in OV_RECIPES:
        pipeline = load(bundles[recipe], threads=1)
        assert {p.backend for p in pipeline.bundle.parts.values()} == {"openvino"}
        worst = 1.0
        for part, part_feeds in feeds.items():
            for feed in part_feeds:
                ref, got = fp32.run(part, feed), pipeline.run(part, feed)
                for name, value in ref.items():
                    if value.dtype.kind == "f":
                        worst = min(worst, _cosine(value, got[name]))
        found[recipe] = worst
    assert all(found[r] >= PART_MIN_COSINE[r] for r in OV_RECIPES), found


def _generate(pipeline, photo, **generation):
    """What each family makes of ``photo``: token ids where the pipeline gives them, else text."""
    if hasattr(pipeline, "caption_tokens"):
        return pipeline.caption_tokens([photo], **generation)
    return pipeline.answer(photo, "What is in the picture?", **generation)


@pytest.mark.parametrize("fixture", FAMILY_BUNDLES)
def test_fp32_generates_what_onnxruntime_generates(fixture, ov_bundles, photos):
    bundles = ov_bundles[fixture]
    ort, ov = load(bundles["fp32"], threads=1), load(bundles["ov-fp32"], threads=1)
    assert type(ov.decoder).__name__ == "StatefulKVDecoder" and ov.decoder.grows_in_place  # the cache in the model
    for options in ({"max_new_tokens": 8, "min_new_tokens": 8}, {"max_new_tokens": 6, "num_beams": 2}):
        assert _generate(ov, photos[0], **options) == _generate(ort, photos[0], **options), options


def test_a_padded_batch_and_a_conversation_on_openvino(ov_bundles, photos):
    """LLaVA's plain graph on OpenVINO: left-padded prompts of different lengths, and a chat whose
    second turn reuses the first turn's cache (the stateful request's, cut to the shared prefix)."""
    bundles = ov_bundles["llava_plain_bundle"]
    ort, ov = load(bundles["fp32"], threads=1), load(bundles["ov-fp32"], threads=1)
    questions = ["Describe it.", "What colour is the main object in this picture?"]
    assert ov.answer_batch(photos[:2], questions, max_new_tokens=6) == \
        ort.answer_batch(photos[:2], questions, max_new_tokens=6)
    said = []
    for pipeline in (ort, ov):
        chat = pipeline.chat(photos[0])
        said.append([chat.send("Hello.", max_new_tokens=4), chat.send("And then?", max_new_tokens=4)])
    assert said[0] == said[1]


def test_a_builder_graph_is_refused_with_the_fix(llava_bundle, tmp_path):
    with pytest.raises(QuantizeError, match=r"GroupQueryAttention.*--llm-graph plain"):
        quantize(llava_bundle, "ov-fp32", tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fixture", FAMILY_BUNDLES)
def test_int4_decoders_are_measured_by_next_token_agreement(fixture, ov_bundles):
    """ov-int4 compresses a decoder data-aware and chooses its group and 4-bit share by next-token
    top-1 agreement with FP32 on the prefills (the figure the family's auto floor uses): the shipped
    decoder's agreement is the one recorded for the chosen candidate."""
    import json

    import openvino as ov

    from edgevfm.quantize.openvino import INT4_MIN_AGREEMENT, HeldOut, is_decoder
    from edgevfm.runtime.bundle import open_bundle

    fp32, int4 = open_bundle(ov_bundles[fixture]["fp32"]), ov_bundles[fixture]["ov-int4"]
    parts = json.loads((int4 / "manifest.json").read_text())["recipe"]["parts"]
    pipeline = load(fp32.path, threads=1)
    feeds = CALIBRATION.get(fp32.family)(pipeline, calibration_images(None, 2), 2)
    decoders = [name for name in parts if is_decoder(ov.Core().read_model(str(int4 / f"{name}.xml")))]
    assert decoders, parts
    for name in decoders:
        settings = parts[name]
        assert settings["measured"] == "next-token top-1 agreement" and settings["floor"] == INT4_MIN_AGREEMENT
        assert settings["data_aware"] == "awq, scale estimation", settings
        chosen = settings["tried"][f"group {settings['group_size']}, ratio {settings['ratio']}"]
        held_out = HeldOut(ov.convert_model(str(fp32.file(f"{name}.onnx"))), feeds[name])
        assert held_out.agreement(ov.Core().read_model(str(int4 / f"{name}.xml"))) == pytest.approx(chosen, abs=1e-6)


def test_generation_on_openvino_needs_no_torch(ov_bundles, photos):
    """The engine over OpenVINO decoders, with torch unimportable, says what the FP32 bundle says."""
    import subprocess
    import sys

    bundle = ov_bundles["blip2_bundle"]["ov-int4"]
    code = f"""
import sys, skimage.data
sys.modules["torch"] = None
from edgevfm.runtime import load
print(load({str(bundle)!r}, threads=1).caption_tokens([skimage.data.astronaut()], max_new_tokens=5, min_new_tokens=5))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    expected = load(bundle, threads=1).caption_tokens([photos[0]], max_new_tokens=5, min_new_tokens=5)
    assert run.stdout.strip() == str(expected)


@pytest.mark.parametrize("recipe", ["ov-int8", "ov-int4"])
def test_weight_compressed_decoders_run_with_onednn_held_to_avx2(recipe, ov_bundles):
    """ONEDNN_MAX_CPU_ISA=AVX2 (docs/int8-on-every-cpu.md: OpenVINO's AVX2 path on any machine) with a
    weight-compressed decoder: OpenVINO's plugin plans its 8-bit activations by the CPU itself, and
    on an AVX-512 machine oneDNN held to AVX2 refused the kernel ("could not create a primitive
    descriptor"). The runtime turns that planning off under the variable: the caption comes."""
    import os
    import subprocess
    import sys

    bundle = ov_bundles["blip_bundle"][recipe]
    code = f"""
import skimage.data
from edgevfm.runtime import load
print(len(load({str(bundle)!r}, threads=1).caption_tokens([skimage.data.astronaut()], max_new_tokens=4,
                                                          min_new_tokens=4)[0]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "4"


def test_the_kv_cache_benchmark_compares_like_with_like(ov_bundles, tmp_path, capsys):
    """benchmarks/kv_cache.py times a decode step with the explicit cache (the engine's) and with the
    cache inside the model (stateful); both must compute the same logits, or the figures mean nothing."""
    from edgevfm.benchmarks import kv_cache

    bundle = ov_bundles["llava_plain_bundle"]["ov-fp32"]
    rows = kv_cache.measure(bundle, "llm", contexts=(5, 17), steps=3, threads=1, rounds=2)
    assert [r["context"] for r in rows] == [5, 17]
    for r in rows:
        assert r["logits_max_diff"] < 1e-4 and r["explicit_ms"] > 0 and r["stateful_ms"] > 0, r
    assert rows[1]["cache_mb"] > rows[0]["cache_mb"] > 0
    out = tmp_path / "kv.md"
    assert kv_cache.main([str(bundle), "--contexts", "4", "--steps", "2", "--threads", "1", "--rounds", "1", "-o", str(out)]) == 0
    assert "| 4 |" in out.read_text() and "Produced by `python -m edgevfm.benchmarks.kv_cache " in out.read_text()
    from edgevfm.runtime.errors import UsageError

    with pytest.raises(UsageError, match="takes no past_\\* inputs: it is not a KV-cache decoder"):
        kv_cache.measure(bundle, "vision")


def test_the_stateful_cache_equals_the_explicit_one_and_cuts_back(ov_bundles):
    """The stateful decoder's logits equal the explicit cache's on the same OpenVINO part (prefill,
    then a step), and a cache cut back to the prompt decodes the same step again (a chat's next turn,
    the LLaVA benchmark's repeated decode call). Decoding stateful, the part holds only the stateful
    compiled model (the decoder's weights once); the plain one is compiled again when asked for."""
    from edgevfm.runtime.decoders import KVDecoder

    llava = load(ov_bundles["llava_plain_bundle"]["ov-fp32"], threads=1)
    llm, stateful = llava.manifest["llm"], llava.decoder
    explicit = KVDecoder(llava.parts["llm"], llm["num_layers"], llm["kv_heads"], llm["head_dim"])
    rng = np.random.default_rng(0)
    prompt = rng.standard_normal((1, 5, llm["hidden_size"])).astype(np.float32)
    token = rng.standard_normal((1, 1, llm["hidden_size"])).astype(np.float32)
    steps = []
    for decoder in (stateful, explicit):
        _, _, cache = decoder.step(prompt, np.ones((1, 5), np.int64), np.arange(5)[None], decoder.empty_cache(1, 6))
        assert (llava.parts["llm"]._compiled is None) == (decoder is stateful)
        again = []
        for _ in range(2):
            past = decoder.resume(cache, 5, 6)
            again.append(decoder.step(token, np.ones((1, 6), np.int64), np.asarray([[5]]), past)[0])
        np.testing.assert_allclose(again[1], again[0], atol=1e-5)
        steps.append(again[0])
    np.testing.assert_allclose(steps[1], steps[0], atol=1e-4)


def test_the_stateful_decoder_fuses_its_cache_into_attention_at_full_precision(ov_bundles):
    """Compiled stateful, every layer's attention appends to its cache in one fused kernel (no
    per-step concatenation of the cache, no GQA broadcast copies), the cache is kept at the part's
    precision (the CPU plugin would keep it in u8), and beam search's reorder is a gather inside the
    graph: taking rows 1, 0 of a two-row cache decodes what the swapped rows decode."""
    import collections

    import openvino as ov

    llava = load(ov_bundles["llava_plain_bundle"]["ov-fp32"], threads=1)
    llm, decoder = llava.manifest["llm"], llava.decoder
    rng = np.random.default_rng(0)
    prompt = rng.standard_normal((2, 4, llm["hidden_size"])).astype(np.float32)
    token = rng.standard_normal((2, 1, llm["hidden_size"])).astype(np.float32)
    mask, positions = np.ones((2, 4), np.int64), np.tile(np.arange(4), (2, 1))
    _, _, cache = decoder.step(prompt, mask, positions, decoder.empty_cache(2, 5))
    compiled = llava.parts["llm"].stateful({}).compiled
    kind = lambda op: op.get_rt_info()["layerType"].astype(str)  # noqa: E731
    ops = compiled.get_runtime_model().get_ops()
    assert collections.Counter(map(kind, ops))["ScaledDotProductAttention"] == llm["num_layers"]
    read = [kind(i.get_source_output().get_node()) for op in ops if kind(op) == "Concatenation" for i in op.inputs()]
    assert "MemoryInput" not in read  # the cache is not concatenated outside the attention
    assert compiled.get_property("KV_CACHE_PRECISION") == ov.Type.f32
    cache = decoder.reorder(cache, np.asarray([1, 0]))
    swapped, _, _ = decoder.step(token[::-1], np.ones((2, 5), np.int64), np.full((2, 1), 4), cache)
    _, _, fresh = decoder.step(prompt[::-1], mask, positions, decoder.empty_cache(2, 5))
    expected, _, _ = decoder.step(token[::-1], np.ones((2, 5), np.int64), np.full((2, 1), 4), fresh)
    np.testing.assert_allclose(swapped, expected, atol=1e-5)


def test_a_gated_mlp_runs_fp32_at_one_thread_on_amx(ov_bundles, monkeypatch):
    """OpenVINO's AMX kernel for a gated MLP dies with SIGFPE compiled for one thread (2026.3-2026.4.1):
    only such a part, only at one thread, only on a CPU with AMX falls back to FP32; the ov-bf16
    bundle then opens and runs at one thread on every CPU (this test file's fixtures open it so)."""
    import openvino as ov

    from edgevfm.runtime import backends

    bundle = ov_bundles["llava_plain_bundle"]["ov-bf16"]
    core = ov.Core()
    monkeypatch.setattr(backends, "instruction_sets", lambda: ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16"))
    assert backends.one_thread_amx_mlp(core, bundle / "llm.xml", 1)  # SmolLM2-like: SiLU-gated MLP
    assert not backends.one_thread_amx_mlp(core, bundle / "llm.xml", 2)
    assert not backends.one_thread_amx_mlp(core, bundle / "vision.xml", 1)  # CLIP's MLP is not gated
    monkeypatch.setattr(backends, "instruction_sets", lambda: ("avx512f", "avx512_bf16"))
    assert not backends.one_thread_amx_mlp(core, bundle / "llm.xml", 1)
    monkeypatch.undo()
    from edgevfm.runtime.cpu import instruction_sets, runs_bf16

    llava = load(bundle, threads=1)  # on this CPU, whichever it is
    bf16 = ov.Type.bf16 if runs_bf16() else ov.Type.f32
    llm = ov.Type.f32 if "amx_bf16" in instruction_sets() else bf16
    assert llava.parts["llm"].compiled.get_property("INFERENCE_PRECISION_HINT") == llm
    assert llava.parts["vision"].compiled.get_property("INFERENCE_PRECISION_HINT") == bf16
