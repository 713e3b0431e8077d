"""``edgevfm batch`` on a two-node local cluster (``ray.cluster_utils.Cluster``: a head without CPUs
and a worker node with two), so every row is computed on the worker node: the bundle is shipped
through the object store, checked there against its manifest's sha256s, unpacked into that node's
cache and used; a bundle tampered with after its manifest was written is refused with the runtime's
``BundleError`` and no copy of it is kept."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the [scale] extra (ray[data]) is not installed")

from edgevfm.runtime import load  # noqa: E402
from edgevfm.runtime.errors import BundleError  # noqa: E402
from edgevfm.scale.batch import BatchJob, run_batch  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cache = tmp_path_factory.mktemp("node-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEVFM_BUNDLE_CACHE", str(cache))  # the nodes' processes inherit it
        made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        worker = made.add_node(num_cpus=2)
        made.wait_for_nodes()
    yield made, worker.node_id, cache
    if ray.is_initialized():
        ray.shutdown()
    made.shutdown()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-images")
    rng = np.random.default_rng(3)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_a_job_without_an_address_starts_its_own_ray_beside_a_running_cluster(cluster):
    """Without --address a job runs on a Ray of its own, also while another Ray runs on the
    machine (this module's cluster: two nodes, the head without CPUs): Ray's default would join
    that one, with its CPUs refused, or stop under it when its owner ends."""
    import subprocess
    import sys

    script = ("from edgevfm.scale.cluster import connected\n"
              "with connected(None) as ray:\n"
              "    print([n['Resources'].get('CPU') for n in ray.nodes() if n['Alive']])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"[{float(os.cpu_count())}]"  # one node, this machine's CPUs


def test_the_worker_node_gets_the_bundle_checks_it_and_uses_it(cluster, pictures, clip_bundle, tmp_path):
    made, worker_node, cache = cluster
    summary = run_batch(BatchJob({"bundle": str(clip_bundle)}, "embed", str(pictures), str(tmp_path / "out"),
                                 address=made.address))
    copies = summary["bundle_copies"]
    assert list(copies) == [worker_node]  # the head has no CPUs: it runs no worker and keeps no copy
    copy = Path(copies[worker_node]["bundle"])
    assert copy.parent == cache and copy != clip_bundle
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in clip_bundle.iterdir())
    assert summary["rows_by_node"] == {worker_node: 24} and summary["errors"] == 0
    # a driver joining a running cluster keeps Ray's usage stats on (ray.init of a new one turns them
    # off), and with them Ray Data's poller thread for the worker's life: conftest opts out
    assert "data-usage-metrics-poller" not in {t.name for t in threading.enumerate()}
    table = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out").glob("part-*.parquet"))])
    table = table.sort_by("path")
    expected = load(clip_bundle, threads=1).embed_images(table.column("path").to_pylist())
    np.testing.assert_allclose(np.stack([np.float32(v) for v in table.column("embedding").to_pylist()]), expected,
                               rtol=0, atol=1e-6)


def test_a_tampered_bundle_is_refused_on_the_node(cluster, pictures, clip_bundle, tmp_path):
    made, worker_node, cache = cluster
    tampered = tmp_path / "tampered"
    shutil.copytree(clip_bundle, tampered)
    weights = tampered / "text.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern changed, the size kept: only the hash can tell
    weights.write_bytes(bytes(data))
    before = set(cache.iterdir())
    with pytest.raises(BundleError, match="file 'text.onnx' does not match its sha256 in the manifest"):
        run_batch(BatchJob({"bundle": str(tampered)}, "embed", str(pictures), str(tmp_path / "out"),
                           address=made.address))
    assert set(cache.iterdir()) == before  # the bad copy was removed from the node
    assert not (tmp_path / "out").exists()  # the output folder it made is gone: no result, nothing half-done


def test_the_fleet_bench_writes_one_report_with_a_row_per_machine(cluster, clip_bundle, tmp_path, capsys,
                                                                  monkeypatch):
    from edgevfm.runtime.cli import main

    made, worker_node, cache = cluster
    monkeypatch.setenv("EDGEVFM_BUNDLE_CACHE", str(cache))
    second = made.add_node(num_cpus=1)  # a second machine with CPUs (last test here: the others expect one)
    made.wait_for_nodes()
    out = tmp_path / "fleet"
    code = main(["bench", str(clip_bundle), "--reference", "random:clip-tiny", "--every-node", "--address",
                 made.address, "--runs", "3", "--rounds", "1", "--threads", "1", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    fleet = json.loads((out / "fleet.json").read_text())
    assert set(fleet["nodes"]) == {worker_node, second.node_id}
    for node, found in fleet["nodes"].items():
        assert found["machine"]["isa"] and found["machine"]["usable_cores"] >= 1
        assert [r["name"] for r in found["rows"]] == ["pytorch eager fp32", "onnxruntime fp32"]
        assert set(found["rows"][1]["p50_ms"]) == {"vision", "text"}
        own = json.loads((out / "nodes" / node[:12] / "results.json").read_text())
        assert Path(own["rows"][1]["path"]).parent == cache  # that node's checked copy was benched
    table = (out / "fleet.md").read_text()
    assert all(f"| {node[:12]} |" in table for node in fleet["nodes"])
    assert "| onnxruntime fp32 |" in table


def test_address_without_every_node_is_a_usage_error(clip_bundle, tmp_path, capsys):
    from edgevfm.runtime.cli import main

    code = main(["bench", str(clip_bundle), "--reference", "random:clip-tiny", "--address", "auto",
                 "-o", str(tmp_path / "r")])
    assert code == 2 and "--address goes with --every-node" in capsys.readouterr().err


def test_auto_on_every_node_records_each_machines_winner(cluster, clip_bundle, tmp_path, capsys):
    """Runs after the fleet bench test, which gave the cluster its second node with CPUs."""
    from edgevfm.runtime.cli import main

    made, worker_node, cache = cluster
    out = tmp_path / "auto"
    code = main(["quantize", str(clip_bundle), "--recipe", "auto", "--every-node", "--address", made.address,
                 "--candidates", "fp32", "int8-dynamic", "--min-cosine", "0.9", "--max-drop", "0.5", "--threads", "1",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    found = json.loads((out / "fleet-auto.json").read_text())["nodes"]
    assert len(found) == 2 and worker_node in found
    for node in found.values():
        auto = node["auto"]
        assert sorted(c["recipe"] for c in auto["candidates"]) == ["fp32", "int8-dynamic"]
        passed = [c for c in auto["candidates"] if c["passed"]]
        assert auto["chosen"] == min(passed, key=lambda c: c["latency_ms"])["recipe"]
        assert auto["measured"]["isa"]
    table = (out / "fleet-auto.md").read_text()
    assert all(f"| {node[:12]} |" in table for node in found) and "| int8-dynamic |" in table


def test_every_node_goes_with_recipe_auto(clip_bundle, tmp_path, capsys):
    from edgevfm.runtime.cli import main

    code = main(["quantize", str(clip_bundle), "--recipe", "int8-dynamic", "--every-node", "-o", str(tmp_path / "q")])
    assert code == 2 and "--every-node and --address go with --recipe auto" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
