"""The OpenVINO backend and its conversion recipes (issue 9's first steps): an IR part (.xml and
.bin, both hashed) runs behind the same runtime API; an FP32 part really runs in FP32 (equal to ONNX
Runtime at 1e-4), a BF16 one close to it; the compiled-model cache is keyed by the part's files,
the device and OpenVINO's version, used on a second load and not after the part changes; without
torch; and the errors a user can meet are typed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from edgevfm.runtime import load
from edgevfm.runtime.errors import UsageError

from helpers import copy_bundle, edit_manifest

@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEVFM_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def ov_clip(clip_recipe_bundles):
    return {r: clip_recipe_bundles[r] for r in ("ov-fp32", "ov-bf16")}


def test_ir_parts_are_listed_and_hashed(ov_clip):
    manifest = json.loads((ov_clip["ov-fp32"] / "manifest.json").read_text())
    for name, part in manifest["parts"].items():
        assert part["backend"] == "openvino" and part["precision"] == "fp32"
        assert part["file"] == f"{name}.xml" and part["data"] == [f"{name}.bin"]
        assert {part["file"], *part["data"]} <= set(manifest["files"])
    assert json.loads((ov_clip["ov-bf16"] / "manifest.json").read_text())["parts"]["vision"]["precision"] == "bf16"


def test_fp32_runs_fp32_and_bf16_stays_close(ov_clip, clip_bundle, photos):
    ort = load(clip_bundle, threads=1)
    texts = ["a photo of a cat", "a rocket"]
    images, words = ort.embed_images(photos[:3]), ort.embed_texts(texts)
    fp32 = load(ov_clip["ov-fp32"], threads=1)
    np.testing.assert_allclose(fp32.embed_images(photos[:3]), images, atol=1e-4)
    np.testing.assert_allclose(fp32.embed_texts(texts), words, atol=1e-4)
    bf16 = load(ov_clip["ov-bf16"], threads=1)
    assert np.min(np.sum(bf16.embed_images(photos[:3]) * images, axis=1)) >= 0.999  # unit embeddings: cosine


def test_nncf_int8_is_quantized_and_calibrated(clip_recipe_bundles):
    import openvino as ov

    bundle = clip_recipe_bundles["ov-int8"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {p["precision"] for p in manifest["parts"].values()} == {"int8"}
    assert manifest["calibration"]["samples"] == {"vision": 8, "text": 8}
    for part in ("vision", "text"):
        ops = [op.get_type_name() for op in ov.Core().read_model(str(bundle / f"{part}.xml")).get_ops()]
        assert ops.count("FakeQuantize") >= 4, part  # INT8 MatMuls, in OpenVINO's quantized form


def test_smooth_quant_is_kept_per_part_by_measurement(clip_bundle, clip_recipe_bundles):
    """ov-int8 quantizes each part with SmoothQuant and without on three quarters of the calibration
    feeds, records both cosines against FP32 on the held-out quarter and ships the closer one: the
    shipped part's cosine on those feeds is the one recorded."""
    from edgevfm.quantize.api import bundle_feeds
    from edgevfm.quantize.openvino import mean_cosine
    from edgevfm.runtime.bundle import open_bundle

    bundle = clip_recipe_bundles["ov-int8"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    feeds = bundle_feeds(open_bundle(clip_bundle), None, 8)
    fp32, int8 = load(clip_bundle, threads=1), load(bundle, threads=1)
    for part in ("vision", "text"):
        settings = manifest["recipe"]["parts"][part]
        cosines = settings["smooth_quant_cosine"]
        assert (settings["samples"], settings["checked_on"]) == (6, "2 held-out feeds"), settings
        assert set(cosines) == {"on", "off"} and settings["smooth_quant"] == max(cosines, key=cosines.get)
        # below ov-int8's floor, accuracy control may have put operations back in float (next test)
        assert settings.get("cosine_all_int8", settings["cosine"]) == cosines[settings["smooth_quant"]]
        held_out = feeds[part][6:]
        want = [[v.astype(np.float64).ravel() for v in fp32.run(part, f).values()] for f in held_out]
        got = [[v.astype(np.float64).ravel() for v in int8.run(part, f).values()] for f in held_out]
        assert mean_cosine(want, got) == pytest.approx(settings["cosine"], abs=1e-4)


@pytest.mark.parametrize("floor", [0.5, 0.99999])
def test_sensitive_operations_go_back_to_float_below_the_floor(clip_bundle, tmp_path, floor):
    """Above its floor, ov-int8 ships the part all INT8; below it, NNCF's accuracy control returns
    the operations that cost the most cosine to float: the part records them, they take no
    quantized input in the shipped IR, and the held-out cosine it records is the shipped part's and
    higher than all-INT8's."""
    import openvino as ov

    from edgevfm.quantize.api import bundle_feeds
    from edgevfm.quantize.openvino import HeldOut, fake_quantized_ops, openvino_int8
    from edgevfm.runtime.bundle import open_bundle

    source = open_bundle(clip_bundle)
    feeds = bundle_feeds(source, None, 8)["text"]
    settings = openvino_int8(source.file("text.onnx"), tmp_path / "text.xml", feeds=feeds, min_cosine=floor)
    shipped = ov.Core().read_model(str(tmp_path / "text.xml"))
    held_out = HeldOut(ov.convert_model(str(source.file("text.onnx"))), feeds)
    assert held_out.cosine(shipped) == pytest.approx(settings["cosine"], abs=1e-5)
    if floor == 0.5:
        assert "below_floor" not in settings and "kept_in_float" not in settings, settings
        return
    assert settings["below_floor"] == floor and settings["kept_in_float"], settings
    assert settings["cosine"] > settings["cosine_all_int8"], settings
    assert not set(settings["kept_in_float"]) & fake_quantized_ops(shipped)
    assert fake_quantized_ops(shipped), "accuracy control put every operation back in float"


@pytest.mark.parametrize("floor", [0.5, 0.99999])
def test_quick_tries_smooth_quant_only_where_off_misses_the_floor(clip_bundle, tmp_path, floor):
    """edgevfm demo's quick ov-int8 quantizes without SmoothQuant first and stops there where that
    reaches the floor (saying what it did not try); below the floor it tries SmoothQuant too, keeps
    the closer and skips accuracy control, saying so. Without quick both are always tried."""
    from edgevfm.quantize.api import bundle_feeds
    from edgevfm.quantize.openvino import openvino_int8
    from edgevfm.runtime.bundle import open_bundle

    source = open_bundle(clip_bundle)
    feeds = bundle_feeds(source, None, 8)["vision"]
    quick = openvino_int8(source.file("vision.onnx"), tmp_path / "quick.xml", feeds=feeds, min_cosine=floor, quick=True)
    if floor == 0.5:
        assert quick["smooth_quant_cosine"].keys() == {"off"} and quick["smooth_quant"] == "off", quick
        assert quick["smooth_quant_not_tried"] == "on (quick: off reached the floor 0.5)"
        assert "below_floor" not in quick and quick["cosine"] == quick["smooth_quant_cosine"]["off"]
    else:
        cosines = quick["smooth_quant_cosine"]
        assert cosines.keys() == {"off", "on"} and max(cosines.values()) < floor, quick
        assert quick["smooth_quant"] == max(cosines, key=cosines.get) and "smooth_quant_not_tried" not in quick
        assert (quick["below_floor"], quick["accuracy_control"]) == (floor, "skipped (quick: edgevfm demo)")
    full = openvino_int8(source.file("vision.onnx"), tmp_path / "full.xml", feeds=feeds, min_cosine=0.5)
    assert full["smooth_quant_cosine"].keys() == {"off", "on"} and "smooth_quant_not_tried" not in full
    assert full["smooth_quant_cosine"]["off"] == quick["smooth_quant_cosine"]["off"]  # the same quantization


def test_int4_group_and_share_are_chosen_by_measurement(clip_bundle, clip_recipe_bundles, tmp_path):
    """ov-int4 tries (group, share at 4 bits) in order of bits per weight and ships the first within
    its floor, else the closest; the shipped part's held-out cosine is the one recorded; a block
    size the user gives fixes the group."""
    import openvino as ov

    from edgevfm.quantize.api import bundle_feeds, quantize
    from edgevfm.quantize.openvino import INT4_MIN_COSINE, bits_per_weight, HeldOut
    from edgevfm.runtime.bundle import open_bundle

    source = open_bundle(clip_bundle)
    feeds = bundle_feeds(source, None, 8)
    parts = json.loads((clip_recipe_bundles["ov-int4"] / "manifest.json").read_text())["recipe"]["parts"]
    for part, settings in parts.items():
        tried = [(int(k.split(",")[0].split()[1]), float(k.split()[-1]), v) for k, v in settings["tried"].items()]
        bits = [bits_per_weight(g, r) for g, r, _ in tried]
        assert bits == sorted(bits) and settings["floor"] == INT4_MIN_COSINE, settings
        values = [v for _, _, v in tried]
        assert all(v < INT4_MIN_COSINE for v in values[:-1]), settings  # it stopped at the first within the floor
        best = tried[-1] if values[-1] >= INT4_MIN_COSINE else max(tried, key=lambda t: t[2])
        assert (settings["group_size"], settings["ratio"]) == best[:2], settings
        shipped = ov.Core().read_model(str(clip_recipe_bundles["ov-int4"] / f"{part}.xml"))
        held_out = HeldOut(ov.convert_model(str(source.file(f"{part}.onnx"))), feeds[part])
        assert held_out.cosine(shipped) == pytest.approx(best[2], abs=1e-5)
    fixed = quantize(clip_bundle, "ov-int4", tmp_path / "g64", block_size=64, samples=8, show_progress=False)
    for settings in json.loads((fixed / "manifest.json").read_text())["recipe"]["parts"].values():
        assert {k.split(",")[0] for k in settings["tried"]} == {"group 64"} and settings["group_size"] == 64


def test_an_int8_part_can_run_its_float_operations_in_bf16(sam_recipe_bundles, tmp_path):
    """sam-ov-int8-bf16's encoder says compute bf16: OpenVINO is told bf16 where the CPU has it (f32
    elsewhere); a compute the runtime does not know is a typed error naming the field."""
    import openvino as ov

    from edgevfm.runtime import BundleError

    bundle = sam_recipe_bundles["sam-ov-int8-bf16"]
    encoder = json.loads((bundle / "manifest.json").read_text())["parts"]["image_encoder"]
    assert (encoder["precision"], encoder["compute"]) == ("int8", "bf16")
    assert "compute" not in json.loads((sam_recipe_bundles["sam-ov-int8"] / "manifest.json").read_text())["parts"][
        "image_encoder"]
    hint = load(bundle, threads=1).parts["image_encoder"].compiled.get_property("INFERENCE_PRECISION_HINT")
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert hint == (ov.Type.bf16 if has_bf16 else ov.Type.f32), hint
    broken = copy_bundle(bundle, tmp_path / "broken")
    edit_manifest(broken, lambda m: m["parts"]["image_encoder"].update(compute="int3"))
    with pytest.raises(BundleError, match="compute.*int3|int3.*compute"):
        load(broken)


def test_sam_fp32_equals_onnxruntime(sam_bundle, sam_recipe_bundles, photos):
    """ov-fp32's low-res logits within 1e-3 of ONNX Runtime FP32 (ov-int8's masks: test_pipeline_sam)."""
    theirs, ours = load(sam_bundle, threads=1), load(sam_recipe_bundles["ov-fp32"], threads=1)
    for p in (theirs, ours):
        p.set_image(photos[1])
    reference, found = (p.predict(points=[[200, 150]], labels=[1]) for p in (theirs, ours))
    np.testing.assert_allclose(found.low_res_logits, reference.low_res_logits, atol=1e-3)
    assert (found.masks == reference.masks).mean() > 0.999
    # the encoder is compiled for the one image SAM's pipeline runs it on; the decoder's prompts vary
    size = ours.input_size
    assert [list(port.get_partial_shape().to_shape()) for port in ours.parts["image_encoder"].compiled.inputs] == [
        [1, 3, size, size]]
    assert not all(port.get_partial_shape().is_static for port in ours.parts["prompt_decoder"].compiled.inputs)


def test_run_shapes_fill_only_inputs_the_sizes_make_static():
    from types import SimpleNamespace

    from edgevfm.runtime.pipeline import run_shapes

    part = SimpleNamespace(inputs=[{"name": "pixels", "shape": ["batch", 3, 8, 8]},
                                   {"name": "tokens", "shape": ["batch", "sequence"]}])
    assert run_shapes(part, {"batch": 1}) == {"pixels": [1, 3, 8, 8]}
    assert run_shapes(part, {"batch": 2, "sequence": 5}) == {"pixels": [2, 3, 8, 8], "tokens": [2, 5]}
    assert run_shapes(part, {}) == {}


def test_run_shapes_fill_only_the_graphs_dynamic_sizes(tmp_path):
    """Given run sizes, the backend fills a graph's dynamic sizes; a fixed size the run sizes
    contradict stays the graph's, and sizes of another rank than the input's are not applied."""
    import openvino as ov

    from edgevfm.runtime.backends import OpenVinoBackend

    inputs = [ov.opset13.parameter(ov.PartialShape([-1, 3]), ov.Type.f32, name="known"),
              ov.opset13.parameter(ov.PartialShape([-1, 2]), ov.Type.f32, name="other")]
    outputs = [ov.opset13.relu(node) for node in inputs]
    for node, name in zip(inputs + outputs, ("known", "other", "a", "b")):
        node.output(0).set_names({name})
    path = tmp_path / "part.xml"
    ov.save_model(ov.Model(outputs, inputs), str(path))
    backend = OpenVinoBackend(path, threads=1, shapes={"known": [2, 7], "other": [4]})
    shapes = {port.get_any_name(): port.get_partial_shape() for port in backend.compiled.inputs}
    assert shapes == {"known": ov.PartialShape([2, 3]), "other": ov.PartialShape([-1, 2])}
    found = backend.run({"known": np.ones((2, 3), np.float32), "other": -np.ones((5, 2), np.float32)})
    np.testing.assert_array_equal(found["a"], np.ones((2, 3)))
    np.testing.assert_array_equal(found["b"], np.zeros((5, 2)))


def test_the_cache_is_keyed_by_the_part_device_and_version(ov_clip, cache_dir, tmp_path, photos):
    import openvino as ov

    bundle = copy_bundle(ov_clip["ov-fp32"], tmp_path / "b")
    load(bundle, threads=1)
    folders = sorted(p.name for p in (cache_dir / "openvino").iterdir())
    version = ov.__version__.split("-")[0]
    assert len(folders) == 2 and all(f.endswith(f"-CPU-{version}") for f in folders)  # one per part
    assert all(any((cache_dir / "openvino" / f).iterdir()) for f in folders)  # compiled blobs written
    load(bundle, threads=1)
    assert sorted(p.name for p in (cache_dir / "openvino").iterdir()) == folders  # reused, nothing new
    data = bundle / "vision.bin"
    weights = bytearray(data.read_bytes())
    weights[-4:] = b"\x00\x00\x80\x3f"  # the part changes (its last float weight becomes 1.0)
    data.write_bytes(bytes(weights))
    edit_manifest(bundle, lambda m: None, rehash=True)
    load(bundle, threads=1).embed_images(photos[:1])
    assert len(list((cache_dir / "openvino").iterdir())) == 3  # a new key: the stale blob is not used
    assert not list(bundle.glob("*.blob")) and not list(bundle.glob("**/cache*"))  # never in the bundle


def _cached(folder, megabytes, age_s):
    folder.mkdir(parents=True)
    (folder / "blob").write_bytes(bytes(megabytes * 1_000_000))
    then = time.time() - age_s
    os.utime(folder, (then, then))
    return folder


def test_the_cache_stays_under_its_limit_least_recently_used_first(ov_clip, cache_dir, monkeypatch):
    from edgevfm.runtime.backends import prune_compiled_cache

    root = cache_dir / "openvino"
    oldest, older = _cached(root / "a", 3, 3 * 86400), _cached(root / "b", 3, 2 * 86400)
    recent, used = _cached(root / "c", 3, 600), _cached(root / "d", 3, 5 * 86400)
    monkeypatch.setenv("EDGEVFM_CACHE_LIMIT_GB", "0.0095")  # 12 MB held: the least recently used goes
    assert prune_compiled_cache(root, keep=used) == [oldest]  # d is older but in use
    monkeypatch.setenv("EDGEVFM_CACHE_LIMIT_GB", "0.001")
    assert prune_compiled_cache(root, keep=used) == [older]  # c was used within the hour: it stays
    assert sorted(p.name for p in root.iterdir()) == ["c", "d"]
    # a load touches its parts' folders and prunes the rest
    monkeypatch.setenv("EDGEVFM_CACHE_LIMIT_GB", "0.005")
    stale = _cached(root / "e", 3, 4 * 86400)
    load(ov_clip["ov-fp32"], threads=1)
    parts = [p for p in root.iterdir() if "-CPU-" in p.name]
    assert len(parts) == 2 and all(time.time() - p.stat().st_mtime < 60 for p in parts)
    assert not stale.exists() and not used.exists() and recent.exists()
    monkeypatch.setenv("EDGEVFM_CACHE_LIMIT_GB", "100")  # nothing pruned: only the touch is seen
    for part in parts:  # unused for days: a load makes it the most recently used again
        os.utime(part, (0, 0))
    load(ov_clip["ov-fp32"], threads=1)
    assert all(part.exists() and time.time() - part.stat().st_mtime < 60 for part in parts)


@pytest.mark.parametrize("limit", ["lots", "-1", "nan", "inf"])
def test_a_cache_limit_that_is_not_a_size_is_a_usage_error(limit, ov_clip, monkeypatch):
    monkeypatch.setenv("EDGEVFM_CACHE_LIMIT_GB", limit)
    with pytest.raises(UsageError, match=rf"EDGEVFM_CACHE_LIMIT_GB must be a number of gigabytes, 0 or more "
                                         rf"\(found '{limit}'\): set it to e.g. 4"):
        load(ov_clip["ov-fp32"], threads=1)


def test_an_absent_device_is_a_typed_error(ov_clip):
    with pytest.raises(UsageError, match="OpenVINO device 'NPU9' is not present here"):
        load(ov_clip["ov-fp32"], threads=1, providers=["NPU9"])


def test_without_torch_and_without_openvino(ov_clip, clip_bundle, photos):
    """The OpenVINO path needs no torch; without openvino, loading says which extra to install."""
    code = f"""
import sys, skimage.data
sys.modules["torch"] = None
MISSING
from edgevfm.runtime import load
from edgevfm.runtime.errors import MissingExtraError
try:
    print(load({str(ov_clip["ov-fp32"])!r}, threads=1).embed_images([skimage.data.chelsea()]).shape)
except MissingExtraError as exc:
    print("missing:", exc)
"""
    found = {}
    for missing in (False, True):
        run = subprocess.run([sys.executable, "-c", code.replace("MISSING", "sys.modules['openvino'] = None"
                                                                   if missing else "")],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        found[missing] = run.stdout.strip()
    assert found[False] == str(load(clip_bundle, threads=1).embed_images(photos[:1]).shape)
    assert found[True].startswith("missing: the openvino backend needs the [openvino] extra")
    assert "pip install 'edgevfm[openvino]'" in found[True]


def test_threads_share_an_openvino_pipeline(ov_clip, photos):
    """Each thread gets its own infer request: concurrent calls give the sequential results."""
    from concurrent.futures import ThreadPoolExecutor

    pipeline = load(ov_clip["ov-fp32"], threads=1)
    expected = [pipeline.embed_images([photo]) for photo in photos[:4]]
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda photo: pipeline.embed_images([photo]), photos[:4] * 3))
    for i, got in enumerate(found):
        np.testing.assert_array_equal(got, expected[i % 4])


def test_a_full_disk_is_named(clip_bundle, tmp_path, monkeypatch):
    """OpenVINO reports a full disk as "basic_ios::clear: iostream error": quantize says what it means."""
    import collections

    from edgevfm.quantize import api, openvino
    from edgevfm.quantize.errors import QuantizeError

    def full(model, dst):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "_save", full)
    monkeypatch.setattr(api.shutil, "disk_usage", lambda path: collections.namedtuple("u", "total used free")(0, 0, 5e6))
    with pytest.raises(QuantizeError, match=r"iostream error \(the disk holding .* has 5 MB free, and the part takes "
                                            r"about \d+ MB: free some space, or write the bundle elsewhere\)"):
        api.quantize(clip_bundle, "ov-fp32", tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*"))


def test_the_profile_sums_openvino_s_own_node_times(ov_clip, clip_bundle, tmp_path):
    """benchmarks/profile.py reads OpenVINO's per-node profile of a part: the node types add up to
    the nodes, the matrix products are there, and it names the command; a part on another backend
    or a part that is not there is a typed error."""
    from edgevfm.benchmarks import profile

    found = profile.measure(ov_clip["ov-fp32"], "vision", threads=1, runs=2)
    assert found["call_ms"] > 0 and found["by_kind"] and found["nodes"]
    assert sum(k[2] for k in found["by_kind"]) == pytest.approx(sum(n[0] for n in found["nodes"]), rel=1e-9)
    assert {"FullyConnected", "MatMul"} & {k[0] for k in found["by_kind"]}, found["by_kind"]
    out = tmp_path / "profile.md"
    assert profile.main([str(ov_clip["ov-fp32"]), "--part", "text", "--threads", "1", "--runs", "1", "-o", str(out)]) == 0
    text = out.read_text()
    assert "python -m edgevfm.benchmarks.profile" in text and "| node type | kernel |" in text
    with pytest.raises(UsageError, match="runs on onnxruntime.*ov-\\* bundle"):
        profile.measure(clip_bundle, "vision")
    with pytest.raises(UsageError, match="no part 'nosuch'"):
        profile.measure(ov_clip["ov-fp32"], "nosuch")


def test_going_stateful_lets_go_of_every_threads_plain_request(tmp_path):
    """A part another thread ran plainly holds no compiled model once the engine goes stateful: every
    thread's request goes with the plain compiled model; a thread that runs the part plainly again
    gets a fresh one, and both paths compute the same."""
    import threading

    import openvino as ov

    from edgevfm.runtime.backends import OpenVinoBackend

    past = ov.opset13.parameter(ov.PartialShape([-1, 2, -1, 4]), ov.Type.f32, name="past")
    step = ov.opset13.parameter(ov.PartialShape([-1, 2, 1, 4]), ov.Type.f32, name="x")
    present = ov.opset13.concat([past, step], 2)
    total = ov.opset13.reduce_sum(present, ov.opset13.constant(np.int64([2, 3])), False)
    for node, name in ((past, "past"), (step, "x"), (present, "present"), (total, "total")):
        node.output(0).set_names({name})
    path = tmp_path / "decoder.xml"
    ov.save_model(ov.Model([present, total], [past, step]), str(path))
    backend = OpenVinoBackend(path, threads=1)
    feeds = {"past": np.ones((1, 2, 3, 4), np.float32), "x": np.full((1, 2, 1, 4), 2, np.float32)}
    ran, go_on, found = threading.Event(), threading.Event(), {}

    def other_thread():
        found["before"] = backend.run(feeds)["total"]
        ran.set()
        go_on.wait(30)
        found["after"] = backend.run(feeds)["total"]

    worker = threading.Thread(target=other_thread)
    worker.start()
    assert ran.wait(30)
    backend.run(feeds)
    assert len(backend._requests) == 2  # this thread's and the other's, both on the plain model
    stateful = backend.stateful({"past": "present"})
    assert len(backend._requests) == 0 and backend._compiled is None
    go_on.set()
    worker.join(30)
    np.testing.assert_array_equal(found["before"], [[12 + 8] * 2])  # 3 x 4 ones and 4 twos per head
    np.testing.assert_array_equal(found["after"], found["before"])
    request = stateful.request(batch=1, heads=2, head_dim=4)
    for length in (1, 2):  # the state grows by one step per call
        total = request.run({"x": np.full((1, 2, 1, 4), 2, np.float32)}, "total")
        np.testing.assert_array_equal(total, [[8 * length] * 2])


def _matmul_onnx(path, op: str = "MatMul", width: int = 64) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((width, width)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_part_converted_once_is_the_callers_own_copy_and_a_rewritten_part_converts_again(tmp_path):
    """Small parts are converted once per process: every caller gets its own model (NNCF compresses
    weights in place), and a part whose file changed is converted again, never served stale."""
    import nncf

    from edgevfm.quantize.openvino import converted

    def types(model):
        return sorted(op.get_type_name() for op in model.get_ops())

    part = tmp_path / "part.onnx"
    _matmul_onnx(part)
    for _ in range(3):  # the conversion, then two served from the process's copy
        model = converted(part)
        assert types(model) == ["Constant", "MatMul", "Parameter", "Result"]
        nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)  # in place: adds Convert, Multiply ...
        assert types(model) != ["Constant", "MatMul", "Parameter", "Result"]
    _matmul_onnx(part, op="Add")  # the same path, another graph
    assert types(converted(part)) == ["Add", "Constant", "Parameter", "Result"]
