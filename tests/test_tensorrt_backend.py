"""The ``tensorrt`` backend's choice of providers (never a silent fall back to the CPU), the typed
error where no TensorRT stack is installed (exit code 4), the options it hands ONNX Runtime's
TensorRT provider (caches keyed by part, GPU and TensorRT version; profiles from the manifest), and
``edgevfm engines``' plans. The device paths themselves cannot run here (README, "Jetson")."""

from __future__ import annotations

import json
import subprocess

import pytest

from edgevfm.runtime import MissingExtraError, load
from edgevfm.runtime import engines, tensorrt
from edgevfm.runtime.bundle import open_bundle
from edgevfm.runtime.cli import main
from edgevfm.runtime.errors import EXIT_MISSING_EXTRA, InputError, UsageError


@pytest.fixture
def clip_trt(trt_bundles):
    return trt_bundles["clip_bundle", "trt-int8"]


def test_a_tensorrt_part_without_tensorrt_is_the_typed_error_that_says_what_to_install(clip_trt):
    with pytest.raises(MissingExtraError, match="on a Jetson, install NVIDIA's onnxruntime-gpu.*CPUExecutionProvider"):
        load(clip_trt)
    with pytest.raises(MissingExtraError, match="tensorrt"):
        load(clip_trt, providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UsageError, match="a tensorrt part runs on .*found providers \\['CUDAExecutionProvider'\\]"):
        load(clip_trt, providers=["CUDAExecutionProvider"])


def test_the_command_exits_4_and_runs_when_the_simulation_is_asked_for(clip_trt, photos, tmp_path, capsys):
    import PIL.Image

    image = tmp_path / "photo.png"
    PIL.Image.fromarray(photos[0]).save(image)
    assert main(["run", str(clip_trt), "classify", str(image), "--labels", "cat,dog"]) == EXIT_MISSING_EXTRA
    assert "edgevfm run --providers CPUExecutionProvider" in capsys.readouterr().err
    assert main(["run", str(clip_trt), "--providers", "CPUExecutionProvider", "classify", str(image),
                 "--labels", "cat,dog"]) == 0
    assert "cat" in capsys.readouterr().out


def test_onnx_runtime_s_tensorrt_provider_gets_keyed_caches_profiles_and_precision(trt_bundles, monkeypatch, tmp_path):
    """Where onnxruntime has the TensorRT provider (a Jetson's onnxruntime-gpu), it is the default,
    with CUDA then CPU for what TensorRT leaves; the options are read here, run there."""
    seen = []

    class Recorder(tensorrt.OrtBackend):
        def __init__(self, path, providers=None, provider_options=None, **kwargs):
            seen.append((path.name, list(providers), provider_options))
            super().__init__(path, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(tensorrt, "ort_providers", lambda: [tensorrt.TRT, tensorrt.CUDA, tensorrt.CPU])
    monkeypatch.setattr(tensorrt, "OrtBackend", Recorder)
    monkeypatch.setattr(tensorrt, "gpu_identity", lambda: {"name": "Orin (nvgpu)", "compute_capability": "8.7"})
    monkeypatch.setattr(tensorrt, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setenv("EDGEVFM_CACHE_DIR", str(tmp_path))
    for recipe, fp16, int8 in (("trt-int8", "False", "True"), ("trt-fp16", "True", "False")):
        seen.clear()
        bundle = trt_bundles["clip_bundle", recipe]
        load(bundle, threads=1)
        parts = open_bundle(bundle).parts
        for name, providers, options in seen:
            part = next(p for p in parts.values() if p.path.name == name)
            assert providers == [tensorrt.TRT, tensorrt.CUDA, tensorrt.CPU]
            trt = options[0]
            cache = tmp_path / "tensorrt" / f"{part.digest[:16]}-orin-nvgpu-sm87-trt10.3.0"
            assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(cache) and cache.is_dir()
            assert trt["trt_engine_cache_enable"] == "True" and trt["trt_fp16_enable"] == fp16
            assert trt["trt_int8_enable"] == int8 and "trt_int8_calibration_table_name" not in trt
            profile = engines.profiles(json.loads((bundle / "manifest.json").read_text()), part.name)
            assert trt["trt_profile_max_shapes"] == ",".join(f"{k}:{'x'.join(map(str, v[2]))}" for k, v in profile.items())
        assert len(seen) == 2


def test_a_prebuilt_engine_that_is_not_there_says_how_to_build_it(clip_trt, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEVFM_CACHE_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="no engine for vision.onnx .*edgevfm engines BUNDLE --build"):
        load(clip_trt, providers=[tensorrt.ENGINE])


def test_cache_keys_never_mix_gpus_or_tensorrt_versions():
    orin = tensorrt.cache_key("ab" * 32, {"name": "Orin", "compute_capability": "8.7"}, "10.3.0")
    assert orin == f"{'ab' * 8}-orin-sm87-trt10.3.0"
    assert len({orin, tensorrt.cache_key("ab" * 32, {"name": "Orin", "compute_capability": "8.7"}, "10.4.0"),
                tensorrt.cache_key("ab" * 32, {"name": "RTX 4090", "compute_capability": "8.9"}, "10.3.0"),
                tensorrt.cache_key("cd" * 32, {"name": "Orin", "compute_capability": "8.7"}, "10.3.0")}) == 4


def test_engine_profiles_are_the_manifest_s_axes_and_the_pipeline_s_run_sizes(trt_bundles):
    sam = engines.plan(trt_bundles["sam_bundle", "sam-trt-int8"], "tensorrt-10.3")
    manifest = json.loads((trt_bundles["sam_bundle", "sam-trt-int8"] / "manifest.json").read_text())
    encoder = manifest["parts"]["image_encoder"]["inputs"][0]
    low, opt, high = sam["parts"]["image_encoder"]["profiles"]["pixel_values"]
    assert low == opt == high == [1, *encoder["shape"][1:]]  # SAM encodes one image at a time (run_sizes)
    decoder = sam["parts"]["prompt_decoder"]["profiles"]
    assert "image_embeddings" not in decoder  # static: no profile needed
    for tensor in manifest["parts"]["prompt_decoder"]["inputs"]:
        if tensor["name"] not in decoder:
            continue
        for shape in decoder[tensor["name"]]:
            for dim, size in zip(tensor["shape"], shape):
                if isinstance(dim, int):
                    assert size == dim
                else:
                    assert engines.DIM_RANGES[dim][0] <= size <= engines.DIM_RANGES[dim][2]
    llm = engines.plan(trt_bundles["llava_plain_bundle", "llava-trt-int4"], "tensorrt-10.3")["parts"]["llm"]
    context = json.loads((trt_bundles["llava_plain_bundle", "llava-trt-int4"] / "manifest.json").read_text())["llm"][
        "context_length"]
    profile = llm["profiles"]
    for i in range(3):  # each of min, opt, max is a shape the graph runs: sequence + past = total
        sequence, past, total = profile["inputs_embeds"][i][1], profile["past_key.0"][i][2], profile["attention_mask"][i][1]
        assert sequence + past == total
    assert profile["inputs_embeds"][1][1] == 1 and profile["inputs_embeds"][2][1] == context  # opt: a decode step
    assert llm["strongly_typed"] and "--stronglyTyped" in llm["command"]
    assert set(llm["cache_key"]) == {"digest", "gpu", "compute_capability", "tensorrt"}
    assert llm["cache_key"]["tensorrt"] == "10.3" and llm["cache_key"]["digest"] == open_bundle(
        trt_bundles["llava_plain_bundle", "llava-trt-int4"]).parts["llm"].digest
    assert f"--maxShapes=inputs_embeds:8x{context}x" in llm["command"]


def test_the_plan_as_a_script_and_as_json(trt_bundles, tmp_path, capsys):
    bundle = trt_bundles["clip_bundle", "trt-fp16"]
    script = tmp_path / "engines.sh"
    assert main(["engines", str(bundle), "--target", "tensorrt-10.15", "--output", str(script), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert set(plan["parts"]) == {"vision", "text"} and plan["tensorrt"] == "10.15"
    assert plan["parts"]["text"]["profiles"]["input_ids"][1] == [1, 77]  # CLIP pads its text to 77 tokens
    text = script.read_text()
    assert text.count("trtexec --onnx=") == 2 and "--stronglyTyped" in text
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0 and script.stat().st_mode & 0o111


def test_engines_refuse_what_they_cannot_plan_or_build(clip_bundle, clip_trt, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no TensorRT-format part: quantize it with a trt-\\* recipe"):
        engines.plan(clip_bundle)
    assert main(["engines", str(clip_bundle)]) == 3
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtexec, and no tensorrt package here
    assert main(["engines", str(clip_trt), "--build"]) == EXIT_MISSING_EXTRA
    assert main(["engines", str(clip_trt), "--output", str(tmp_path)]) == 3  # a folder, not a script path
    with pytest.raises(SystemExit):
        main(["engines", str(clip_trt), "--target", "tensorrt-9"])
