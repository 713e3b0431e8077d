"""The LLaVA benchmark: vision, prefill and decode latency, generation throughput, and accuracy
against the PyTorch reference (next-token agreement and KL, greedy agreement, perplexity)."""

from __future__ import annotations

import pytest

from edgevfm.benchmarks.api import bench


@pytest.fixture(scope="module")
def results(llava_bundle, tmp_path_factory):
    from edgevfm.quantize.api import quantize

    int4 = quantize(llava_bundle, "llava-int4", tmp_path_factory.mktemp("llava-int4") / "b", show_progress=False)
    return bench([llava_bundle, int4], reference="random:llava-tiny", out_dir=tmp_path_factory.mktemp("llava-report"),
                 runs=2, warmup=1, batch=1, threads=1, show_progress=False)


def test_rows_and_latency_parts(results):
    torch_row, fp32, int4 = results["rows"]
    for row in (torch_row, fp32, int4):
        assert list(row["latency_ms"]) == ["vision", "prefill", "decode"]
        assert row["throughput"]["part"] == "tokens" and row["throughput"]["items_per_s"] > 0
    assert int4["recipe"] == "llava-int4" and int4["parts"]["llm"] == "int4"


def test_fp32_bundle_agrees_with_pytorch(results):
    torch_row, fp32, int4 = results["rows"]
    assert torch_row["accuracy"]["next_token_top1_agreement"] == 1.0
    accuracy = fp32["accuracy"]
    assert accuracy["next_token_top1_agreement"] == 1.0 and accuracy["kl_divergence_mean"] < 1e-6
    assert accuracy["greedy_prefix_agreement"] == 1.0
    assert abs(accuracy["perplexity"] / accuracy["fp32_perplexity"] - 1) < 1e-4
    assert 0 <= int4["accuracy"]["kl_divergence_mean"] and "fp32_top1_margin" in int4["accuracy"]


def test_goals_say_what_was_not_measured(results):
    assert len(results["goals"]) == 4  # size, accuracy, bandwidth, llama.cpp
    llama_cpp = next(g for g in results["goals"] if "llama.cpp" in g["goal"])
    assert llama_cpp["met"] is False and "random:llava-tiny has no GGUF weights" in llama_cpp["measured"]
    assert results["peers"]["llama.cpp"] == {"absent": llama_cpp["measured"].split("; ", 1)[1]}
    for name, peer in results["peers"].items():  # measured, or why not
        assert "decode_ms" in peer or peer["absent"], name
    accuracy = next(g for g in results["goals"] if "top-1 agreement" in g["goal"])
    assert "near-tied logits" in accuracy["measured"]
    bandwidth = next(g for g in results["goals"] if "bandwidth" in g["goal"])
    assert "GB/s" in bandwidth["measured"] and "loop's own overhead" in bandwidth["measured"]


def test_loop_overhead_is_reported(results):
    torch_row, fp32, int4 = results["rows"]
    assert torch_row["extra"] == {}
    for row in (fp32, int4):
        assert row["extra"]["decode_tokens_per_s"] > 0 and row["extra"]["loop_overhead_ms_per_token"] >= 0


def test_the_demo_s_quick_bench_prompts_one_photo_and_keeps_the_text():
    """edgevfm demo benches quickly: the image prompts on one photo, the English text whole."""
    from edgevfm.benchmarks.families.llava import LlavaBench

    full, quick = LlavaBench(), LlavaBench()
    quick.quicken()
    assert (full.workload()["images"], full.workload()["prompts"]) == (3, 6)
    assert (quick.workload()["images"], quick.workload()["prompts"]) == (1, 2)
    assert quick.workload()["perplexity_text"] == full.workload()["perplexity_text"]
    assert (quick.images[0] == full.images[0]).all()  # the first of the same photos


def test_the_demo_s_quick_bench_scores_the_first_held_out_questions(tmp_path):
    """With a VQA data set (make demo: trained:llava-shapes' held-out scenes), the quick look scores
    the first QUICK_VQA_ITEMS questions and its workload says of how many; the full one all."""
    from edgevfm.benchmarks.families.llava import QUICK_VQA_ITEMS, LlavaBench
    from edgevfm.benchmarks.scene_data import held_out

    data = str(held_out("llava", root=tmp_path, task="vqa"))
    full, quick = LlavaBench(data), LlavaBench(data)
    quick.quicken()
    assert len(full.annotated) == 200 and len(quick.annotated) == len(quick.data_images) == QUICK_VQA_ITEMS == 32
    assert [a.question for a in quick.annotated] == [a.question for a in full.annotated[:32]]
    assert all((a == b).all() for a, b in zip(quick.data_images, full.data_images[:32], strict=True))
    assert quick.workload()["annotated"] == ("32 vqa items, the first of 200 (edgevfm demo's quick look) "
                                             "(greedy answers of at most 8 tokens, VQA accuracy)")
    assert full.workload()["annotated"] == "200 vqa items (greedy answers of at most 8 tokens, VQA accuracy)"
