"""``edgevfm batch`` on a local Ray (2 CPUs): every input appears once in the output and exactly the
corrupt images carry an error; results equal the Python API's (embeddings to 1e-6, captions word
for word); a job killed with SIGKILL and resumed writes what an uninterrupted job writes; CapFilt on
the trained BLIP presets keeps exactly the pairs whose ITM reaches the threshold. Bad jobs are
refused before any work with typed errors. (Two nodes: tests/test_batch_cluster.py.)"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the [scale] extra (ray[data]) is not installed")

from edgevfm.runtime import load  # noqa: E402
from edgevfm.runtime.cli import main  # noqa: E402
from edgevfm.runtime.errors import (BundleError, BundleExistsError, InputError, MissingExtraError,  # noqa: E402
                                    OutputError, UnknownNameError)
from edgevfm.scale.batch import BatchJob, run_batch  # noqa: E402

GOOD, CORRUPT = 200, 6
ERROR_COLUMNS = ["path", "error", "error_kind"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _corrupt(folder: Path) -> set[str]:
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(png, "PNG")
    bad = {"text.png": b"this is not an image", "empty.jpg": b"", "truncated.png": png.getvalue()[:60],
           "zeros.webp": bytes(500), "half.jpg": b"\xff\xd8\xff\xe0" + bytes(40),
           "header-only.bmp": b"BM" + bytes(10)}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    assert len(bad) == CORRUPT
    return {str(folder / name) for name in bad}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """A folder of GOOD generated images of several sizes and CORRUPT files named as images."""
    folder = tmp_path_factory.mktemp("batch-images")
    rng = np.random.default_rng(7)
    good = set()
    for i in range(GOOD):
        h, w = (int(v) for v in rng.integers(20, 72, size=2))
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        good.add(str(path))
    return folder, good, _corrupt(folder)


def _output(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))]).sort_by("path")


def _by_path(table: pa.Table, column: str) -> dict:
    return dict(zip(table.column("path").to_pylist(), table.column(column).to_pylist()))


def test_embed_writes_every_input_once_and_equals_the_python_api(local_ray, images, clip_bundle, tmp_path):
    folder, good, corrupt = images
    summary = run_batch(BatchJob({"bundle": str(clip_bundle)}, "embed", str(folder), str(tmp_path / "out"),
                                 batch_size=16, shard_rows=64))
    table = _output(tmp_path / "out")
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == GOOD + CORRUPT and set(paths) == good | corrupt
    errors = _by_path(table, "error")
    assert {p for p, e in errors.items() if e} == corrupt
    assert set(_by_path(table, "error_kind")[p] for p in corrupt) == {"InputError"}
    assert all("is not an image Pillow can read" in errors[p] for p in corrupt if not p.endswith("empty.jpg"))
    assert summary["rows"] == GOOD + CORRUPT and summary["errors"] == CORRUPT
    # written as it streams: more than one shard (how many depends on the block sizes Ray hands back)
    assert summary["errors_by_kind"] == {"InputError": CORRUPT}
    assert summary["shards"] == len(list((tmp_path / "out").glob("part-*.parquet"))) >= 2
    assert set(table.column("bundle").to_pylist()) == {json.loads((tmp_path / "out" / "job.json").read_text())
                                                       ["bundles"]["bundle"]}

    expected = load(clip_bundle, threads=1).embed_images(sorted(good))
    found = np.stack([np.asarray(_by_path(table, "embedding")[p], np.float32) for p in sorted(good)])
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)
    assert all(v is None for p, v in _by_path(table, "embedding").items() if p in corrupt)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["rows"] == summary["rows"] and "MapBatches(Worker)" in on_disk["ray_stats"]


def _table_of_bytes(folder: Path, names: list[str], path: Path) -> None:
    blobs = [(folder / n).read_bytes() for n in names]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "text": [f"text {n}" for n in names]}), path)


def test_captions_from_a_table_of_bytes_equal_the_python_api(local_ray, images, blip_bundle, tmp_path, capsys):
    folder, good, corrupt = images
    names = [Path(p).name for p in sorted(good)[:20]] + ["truncated.png", "text.png"]
    table_path = tmp_path / "in.parquet"
    _table_of_bytes(folder, names, table_path)
    code = main(["batch", str(blip_bundle), "caption", "--input", str(table_path), "--output", str(tmp_path / "out"),
                 "--max-new-tokens", "12", "--batch-size", "8"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("batch caption: 22 rows, 2 errors, ")
    table = _output(tmp_path / "out")
    captions = dict(zip(table.column("path").to_pylist(), table.column("caption").to_pylist()))
    blip = load(blip_bundle, threads=1)
    for i, name in enumerate(names):
        row = f"{table_path}#{i}"
        if name in ("truncated.png", "text.png"):
            assert captions[row] is None
        else:
            assert captions[row] == blip.caption(folder / name, max_new_tokens=12), name


def _kill_midway(command: list[str], out: Path) -> None:
    job = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("part-*.parquet")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the driver and the Ray it started: nothing gets to clean up
    job.wait()
    assert not (out / "summary.json").exists(), "the job ended before it was killed: nothing was tested"


def test_a_job_killed_midway_and_resumed_writes_what_an_uninterrupted_job_writes(local_ray, images, blip_bundle,
                                                                                 tmp_path):
    folder, good, corrupt = images
    args = [str(blip_bundle), "caption", "--input", str(folder), "--max-new-tokens", "8", "--batch-size", "4"]
    killed = tmp_path / "killed"
    _kill_midway([sys.executable, "-m", "edgevfm.runtime.cli", "batch", *args, "--output", str(killed),
                  "--workers", "1", "--shard-rows", "4"], killed)
    written = len(_output(killed))
    assert 0 < written < GOOD + CORRUPT

    assert main(["batch", *args, "--output", str(killed)]) == 3  # without --resume: refused, nothing touched
    assert len(_output(killed)) == written
    assert main(["batch", *args, "--output", str(killed), "--resume"]) == 0
    assert main(["batch", *args, "--output", str(tmp_path / "whole")]) == 0
    resumed, whole = _output(killed), _output(tmp_path / "whole")
    assert resumed.column("path").to_pylist() == whole.column("path").to_pylist()  # once each, none lost
    for column in ("caption", "error", "error_kind"):
        assert resumed.column(column).to_pylist() == whole.column(column).to_pylist(), column
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["rows"] == GOOD + CORRUPT and summary["this_run"]["rows"] == GOOD + CORRUPT - written


def test_capfilt_keeps_exactly_the_pairs_whose_itm_reaches_the_threshold(local_ray, blip_shapes_bundle,
                                                                         blip_itm_shapes_bundle, tmp_path):
    from edgevfm.benchmarks.scenes import scenes

    made = scenes(seed=4242, count=16)
    rows = []
    for i, scene in enumerate(made):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(scene.image).save(path)
        text = scene.captions[0] if i % 2 == 0 else made[(i + 5) % len(made)].captions[0]  # half the texts wrong
        rows.append({"path": str(path), "text": text})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    threshold = 0.5
    summary = run_batch(BatchJob({"bundle": str(blip_shapes_bundle), "filter": str(blip_itm_shapes_bundle)}, "capfilt",
                                 str(tmp_path / "pairs.parquet"), str(tmp_path / "out"),
                                 options={"threshold": threshold, "max_new_tokens": 20}))
    table = _output(tmp_path / "out").to_pylist()
    captioner, judge = load(blip_shapes_bundle, threads=1), load(blip_itm_shapes_bundle, threads=1)
    for row in table:
        assert row["error"] is None
        assert row["caption"] == captioner.caption(row["path"], max_new_tokens=20)
        for kind, text in (("caption", row["caption"]), ("text", row["text"])):
            itm = judge.match(row["path"], text)["itm"]
            assert row[f"{kind}_itm"] == pytest.approx(itm, abs=1e-5)
            assert row[f"{kind}_kept"] == (row[f"{kind}_itm"] >= threshold)
    counts = summary["counts"]
    for kind in ("caption_kept", "text_kept"):
        kept = sum(row[kind] for row in table)
        assert counts[kind] == {"true": kept, "false": len(table) - kept}
    right = [row["text_itm"] for i, row in enumerate(table) if made[int(Path(row["path"]).stem[5:])].captions[0]
             == row["text"]]
    wrong = [row["text_itm"] for row in table if row["text_itm"] is not None and row["text_itm"] not in right]
    assert np.mean(right) > np.mean(wrong)  # the trained ITM head tells a scene's caption from another's


def test_classify_ask_and_masks_equal_the_python_api(local_ray, images, clip_bundle, blip_vqa_bundle, sam_bundle,
                                                    tmp_path):
    folder, good, corrupt = images
    picked = sorted(good)[:6] + sorted(corrupt)[:1]
    subset = tmp_path / "subset"
    subset.mkdir()
    for p in picked:
        (subset / Path(p).name).write_bytes(Path(p).read_bytes())
    labels = ["a cat", "a dog", "noise"]
    run_batch(BatchJob({"bundle": str(clip_bundle)}, "classify", str(subset), str(tmp_path / "c"),
                       options={"labels": labels}))
    run_batch(BatchJob({"bundle": str(blip_vqa_bundle)}, "ask", str(subset), str(tmp_path / "a"),
                       options={"question": "what is it?", "max_new_tokens": 6}))
    run_batch(BatchJob({"bundle": str(sam_bundle)}, "masks", str(subset), str(tmp_path / "m"),
                       options={"points_per_side": 2, "pred_iou_thresh": -1e9, "stability_score_thresh": 0.0}))
    clip, vqa, sam = (load(b, threads=1) for b in (clip_bundle, blip_vqa_bundle, sam_bundle))
    classified, asked, masked = (_output(tmp_path / d).to_pylist() for d in "cam")
    for c, a, m in zip(classified, asked, masked):
        name = Path(c["path"]).name
        if c["error"]:
            assert a["error"] and m["error"] and name in {Path(p).name for p in corrupt}
            continue
        image = subset / name
        ranking = clip.classify(image, labels)
        assert c["label"] == ranking[0][0] and c["score"] == pytest.approx(ranking[0][1], abs=1e-6)
        assert c["scores"] == pytest.approx([dict(ranking)[label] for label in labels], abs=1e-6)
        assert a["answer"] == vqa.answer(image, "what is it?", max_new_tokens=6)
        found = sam.generate(image, points_per_side=2, pred_iou_thresh=-1e9, stability_score_thresh=0.0,
                             output_mode="coco_rle")
        records = json.loads(m["masks"])
        assert m["count"] == len(found) == len(records) > 0
        assert [r["segmentation"] for r in records] == [f["segmentation"] for f in found]


def test_bad_jobs_are_refused_before_any_work(images, clip_bundle, sam_bundle, blip_vqa_bundle, tmp_path):
    folder, good, corrupt = images
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match="task 'caption' takes a BLIP captioning or a BLIP-2 bundle; .* is a clip"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "caption", str(folder), out))
    with pytest.raises(UnknownNameError, match="unknown batch task 'segment': expected one of ask, capfilt"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "segment", str(folder), out))
    with pytest.raises(InputError, match="needs --labels"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "classify", str(folder), out))
    with pytest.raises(InputError, match="needs --filter"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "capfilt", str(folder), out, options={"threshold": 0.5}))
    with pytest.raises(InputError, match="task 'ask' needs a question: pass --question"):
        run_batch(BatchJob({"bundle": str(blip_vqa_bundle)}, "ask", str(folder), out))
    with pytest.raises(InputError, match="workers must be a whole number of at least 1, found 0"):
        run_batch(BatchJob({"bundle": str(sam_bundle)}, "masks", str(folder), out, workers=0))
    with pytest.raises(BundleError, match="no manifest.json"):
        run_batch(BatchJob({"bundle": str(tmp_path)}, "embed", str(folder), out))
    with pytest.raises(InputError, match="holds no images"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "embed", str(tmp_path / "*.png"), out))
    table = tmp_path / "t.csv"
    table.write_text("file,text\na.png,x\n")
    with pytest.raises(InputError, match=r"has the columns \['file', 'text'\] but no 'path'"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "embed", str(table), out))
    table.write_text(f"path\n{sorted(good)[0]}\n{sorted(good)[0]}\n")
    with pytest.raises(InputError, match="names 1 images more than once"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "embed", str(table), out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds other files"):
        run_batch(BatchJob({"bundle": str(clip_bundle)}, "embed", str(folder), str(other)))
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_edgevfm_errors_cross_processes_with_their_type_and_message():
    """Ray sends a worker's exception to the driver by pickle: each error keeps its class and text."""
    errors = [BundleError("/b", ["file 'x' does not match"]), UnknownNameError("recipe", "int3", ["int8"]),
              BundleExistsError("/out"), MissingExtraError("scale", "edgevfm batch", ImportError("no ray")),
              InputError("bad image"), OutputError("a file")]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_sources_read_uris_globs_and_tables_of_paths(images, tmp_path):
    """A folder given as a URI (any pyarrow file system; file:// here, s3:// alike), a glob and a
    CSV of paths all give the same rows; a URI's files are read through pyarrow."""
    from edgevfm.scale.sources import read_image_bytes, read_source

    folder, good, corrupt = images
    by_uri = read_source(f"file://{folder}").column("path").to_pylist()
    assert sorted(p.removeprefix("file://") for p in by_uri) == sorted(good | corrupt)
    assert read_image_bytes(by_uri[0]) == Path(by_uri[0].removeprefix("file://")).read_bytes()
    by_glob = read_source(str(folder / "0*.png")).column("path").to_pylist()
    assert by_glob == sorted(p for p in good if Path(p).name.startswith("0"))
    table = tmp_path / "paths.csv"
    table.write_text("path,text\n" + "".join(f"{p},caption {i}\n" for i, p in enumerate(by_glob[:5])))
    rows = read_source(str(table))
    assert rows.column("path").to_pylist() == by_glob[:5] and rows.column("text").to_pylist()[0] == "caption 0"
    with pytest.raises(InputError, match="cannot be read"):
        read_image_bytes(f"file://{tmp_path}/missing.png")


def test_the_demos_batch_line_runs_again_in_the_same_folder(clip_shapes_bundle, tmp_path, capsys):
    """``make demo`` twice: the second batch job starts afresh where a user's job folder would refuse
    it (it holds the first one's results), and both name the same scenes right."""
    from edgevfm.benchmarks.batch_demo import COUNT, demo

    answers = []
    for _ in range(2):
        demo(clip_shapes_bundle, tmp_path / "batch")
        printed = capsys.readouterr().out
        assert "failed" not in printed, printed
        answers.append(printed.split("named right in ")[1].split()[0])
    assert answers[0] == answers[1] and answers[0].endswith(f"/{COUNT}"), answers
