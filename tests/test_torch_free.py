"""The runtime never imports torch: importing it and running a whole CLIP query work with torch
made unimportable, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\nfor name in ('torch', 'transformers', 'tensorrt'):\n    sys.modules[name] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_import_runtime_without_torch():
    result = _run_without_torch("""
        import edgevfm.runtime, edgevfm.runtime.cli, edgevfm.runtime.families
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
        print('ok')
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_full_clip_run_without_torch(clip_bundle, photos):
    result = _run_without_torch(f"""
        import numpy as np, skimage.data
        from edgevfm.runtime import load
        p = load({str(clip_bundle)!r}, threads=1)
        ranking = p.classify(skimage.data.chelsea(), ['a cat', 'a dog', 'a rocket'])
        hits = p.retrieve('a cat', [skimage.data.astronaut(), skimage.data.chelsea()], k=1)
        texts = p.retrieve(skimage.data.chelsea(), ['a cat', 'a dog'], k=2)
        print(round(sum(prob for _, prob in ranking), 4), len(hits), len(texts))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1.0", "1", "2"]


def test_export_without_the_extra_says_what_to_install(tmp_path):
    result = _run_without_torch(f"""
        from edgevfm.runtime.cli import main
        sys.exit(main(['export', 'random:clip-tiny', '-o', {str(tmp_path / 'b')!r}]))
    """)
    assert result.returncode == 4, result.stderr
    assert "edgevfm export needs the [export] extra" in result.stderr
    assert "pip install 'edgevfm[export]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_full_sam_run_without_torch(sam_bundle):
    result = _run_without_torch(f"""
        import skimage.data
        from edgevfm.runtime import load
        p = load({str(sam_bundle)!r}, threads=1)
        p.set_image(skimage.data.chelsea())
        r = p.predict(points=[[220, 150]], labels=[1], box=[80, 20, 330, 290])
        found = p.generate(skimage.data.chelsea(), points_per_side=2, pred_iou_thresh=-1e9, stability_score_thresh=0)
        print(r.masks.shape, len(found) > 0)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 300, 451) True"


def test_llava_chat_without_torch(llava_bundle):
    result = _run_without_torch(f"""
        import skimage.data
        from edgevfm.runtime import load
        p = load({str(llava_bundle)!r}, threads=1)
        chat = p.chat(skimage.data.chelsea(), max_new_tokens=5)
        streamed = ''.join(chat.send('What is unusual about this image?', stream=True))
        print(len(chat.history), streamed == p.answer(skimage.data.chelsea(), 'What is unusual about this image?',
                                                      max_new_tokens=5))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True"]


def test_blip_and_blip2_without_torch(blip_bundle, blip_vqa_bundle, blip_itm_bundle, blip2_bundle, blip2_t5_bundle,
                                      blip2_llama_bundle):
    """Every BLIP and BLIP-2 runtime path: captions (greedy, beams), answers, ITM/ITC, retrieval."""
    result = _run_without_torch(f"""
        import skimage.data
        from edgevfm.runtime import load
        cat, rocket = skimage.data.chelsea(), skimage.data.rocket()
        p = load({str(blip_bundle)!r}, threads=1)
        greedy = p.caption(cat, max_new_tokens=6)
        beams = p.caption(cat, max_new_tokens=6, num_beams=3)
        print(isinstance(greedy, str) and len(greedy) > 0, isinstance(beams, str))
        print(isinstance(load({str(blip_vqa_bundle)!r}, threads=1).answer(cat, "what is it?"), str))
        itm = load({str(blip_itm_bundle)!r}, threads=1)
        scores = itm.match(cat, "a cat")
        print(0 <= scores["itm"] <= 1 and -1 <= scores["itc"] <= 1, len(itm.retrieve("a cat", [cat, rocket], k=2)))
        for bundle in ({str(blip2_bundle)!r}, {str(blip2_t5_bundle)!r}, {str(blip2_llama_bundle)!r}):  # OPT, T5, Llama
            b2 = load(bundle, threads=1)
            print(isinstance(b2.caption(cat, max_new_tokens=4, num_beams=2), str),
                  isinstance(b2.answer(cat, "what is it?", max_new_tokens=4), str))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True", "2"] + ["True"] * 6


def test_the_help_of_every_command_without_torch():
    """Every layer's commands load without torch (the CLI imports each layer's commands module);
    help that lists a registry of the export layer says which extra brings the list."""
    result = _run_without_torch("""
        from edgevfm.runtime.cli import main
        for command in (['export', '--help'], ['quantize', '--help'], ['run', '--help'], ['demo', '--help'], ['--help']):
            try:
                main(command)
            except SystemExit as exit:
                assert exit.code == 0, (command, exit.code)
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
    """)
    assert result.returncode == 0, result.stderr
    assert "presets (MODEL offline, no download) are listed once the [export] extra is installed" in result.stdout
    assert "recipes (RECIPE):" in result.stdout and "sam-int8" in result.stdout


def test_backend_selection_check_and_plans_without_torch(trt_bundles):
    """As on a Jetson without PyTorch: the simulation runs, the default is the typed error, the plan
    and the check are written, with torch (and TensorRT) unimportable."""
    clip = trt_bundles["clip_bundle", "trt-int8"]
    code = textwrap.dedent(f"""
        import sys
        for name in ('torch', 'transformers', 'tensorrt'):
            sys.modules[name] = None
        import numpy as np
        from edgevfm.runtime import MissingExtraError, load
        from edgevfm.runtime.engines import plan
        from edgevfm.quantize.check import check_bundle
        for path in {[str(p) for p in trt_bundles.values()]!r}:
            try:
                load(path)
                raise SystemExit('no error')
            except MissingExtraError as exc:
                assert exc.exit_code == 4
            load(path, providers=['CPUExecutionProvider'], threads=1)
            assert plan(path, 'tensorrt-10.3')['parts']
        assert not [f for f in check_bundle({str(clip)!r}) if f.severity == 'error']
        found = load({str(clip)!r}, providers=['CPUExecutionProvider'], threads=1).embed_texts(['a cat', 'a dog'])
        assert found.shape[0] == 2 and np.isfinite(found).all()
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
        print('ok')
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_server_answers_without_torch(clip_bundle):
    """edgevfm serve on a Jetson: the app, its request models and a CLIP embedding, torch unimportable."""
    result = _run_without_torch(f"""
        from starlette.testclient import TestClient
        from edgevfm.serve.app import create_app
        from edgevfm.serve.models import Served
        with TestClient(create_app([Served('clip', {str(clip_bundle)!r}, threads=1)], load=False)) as http:
            http.app.state.served['clip'].load()
            r = http.post('/v1/embeddings', json={{'model': 'clip', 'input': 'a cat'}})
            print(r.status_code, len(r.json()['data'][0]['embedding']) > 0)
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "True"]


def test_a_batch_job_runs_without_torch_in_the_driver_and_every_worker(clip_bundle, photos, tmp_path):
    """Ray starts its workers as new interpreters: a ``sitecustomize`` on their PYTHONPATH makes
    torch unimportable in each of them as in the driver."""
    import os

    import pytest

    pytest.importorskip("ray", reason="the [scale] extra (ray[data]) is not installed")
    from PIL import Image

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('torch', 'transformers', 'tensorrt'):\n    sys.modules[name] = None\n")
    images = tmp_path / "images"
    images.mkdir()
    for i, photo in enumerate(photos[:4]):
        Image.fromarray(photo).save(images / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    code = "import sys\n" + textwrap.dedent(f"""
        from edgevfm.runtime.cli import main
        code = main(['batch', {str(clip_bundle)!r}, 'classify', '--labels', 'a cat', 'a dog',
                     '--input', {str(images)!r}, '--output', {str(tmp_path / 'out')!r}, '--workers', '2'])
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch classify: 4 rows, 0 errors" in result.stdout
