"""The concurrency contract (README, "Threads"): CLIP and LLaVA are stateless and safe to share;
SAM's current image belongs to the thread that set it, and an ImageEmbedding may be shared. Many
threads at once give exactly the answers of one thread alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgevfm.runtime import load
from edgevfm.runtime.errors import StateError

THREADS = 8
ROUNDS = 6


def _run_in_threads(work, jobs):
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(work, jobs))


def test_clip_shared_by_many_threads(clip_bundle, photos):
    clip = load(clip_bundle, threads=1)
    labels = ["a cat", "a dog", "an astronaut", "a cup of coffee"]
    jobs = [i % 6 for i in range(THREADS * ROUNDS)]
    alone = {i: clip.classify(photos[i], labels) for i in set(jobs)}
    together = _run_in_threads(lambda i: (i, clip.classify(photos[i], labels)), jobs)
    for i, ranking in together:
        assert [label for label, _ in ranking] == [label for label, _ in alone[i]]
        np.testing.assert_allclose([p for _, p in ranking], [p for _, p in alone[i]], atol=1e-6)


def test_sam_threads_each_prompt_their_own_image(sam_bundle, photos):
    """Before the contract, a predictor shared by two threads answered for the other thread's image
    in 37 of 80 calls, silently."""
    sam = load(sam_bundle, threads=1)
    images = [photos[i] for i in range(4)]
    point = [[20, 20]]
    alone = []
    for image in images:
        sam.set_image(image)
        alone.append(sam.predict(points=point, labels=[1]).low_res_logits)

    def work(i):
        index = i % len(images)
        sam.set_image(images[index])
        return index, [sam.predict(points=point, labels=[1]).low_res_logits for _ in range(3)]

    for index, answers in _run_in_threads(work, range(THREADS * ROUNDS)):
        for logits in answers:
            np.testing.assert_allclose(logits, alone[index], atol=1e-5)


def test_sam_image_embedding_is_shared_across_threads(sam_bundle, photos):
    sam = load(sam_bundle, threads=1)
    embedding = sam.set_image(photos[1])
    expected = sam.predict(points=[[100, 100]], labels=[1]).masks
    answers = _run_in_threads(lambda _: sam.predict(points=[[100, 100]], labels=[1], image=embedding).masks,
                              range(THREADS * 2))
    assert all(np.array_equal(a, expected) for a in answers)


def test_sam_image_set_in_another_thread_is_refused_not_used(sam_bundle, photos):
    sam = load(sam_bundle, threads=1)
    sam.set_image(photos[1])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(sam.predict, points=[[10, 10]], labels=[1])
        with pytest.raises(StateError, match="no image set in this thread"):
            future.result()


def test_automatic_masks_leave_the_current_image_alone(sam_bundle, photos):
    sam = load(sam_bundle, threads=1)
    sam.set_image(photos[1])
    before = sam.predict(points=[[100, 100]], labels=[1]).low_res_logits
    sam.generate(photos[0], points_per_side=2, pred_iou_thresh=-1e9, stability_score_thresh=0)
    np.testing.assert_array_equal(sam.predict(points=[[100, 100]], labels=[1]).low_res_logits, before)


def test_llava_shared_by_many_threads(llava_bundle, photos):
    llava = load(llava_bundle, threads=1)
    jobs = [(i % 3, q) for i, q in enumerate(["What is this?", "Describe it.", "Why?"] * 4)]
    alone = {job: llava.answer(photos[job[0]], job[1], max_new_tokens=8) for job in set(jobs)}
    together = _run_in_threads(lambda job: (job, llava.answer(photos[job[0]], job[1], max_new_tokens=8)), jobs)
    assert all(answer == alone[job] for job, answer in together)


def test_spin_wait_false_makes_sessions_sleep_between_operators_and_answers_the_same(clip_bundle, photos):
    """``load(spin_wait=False)`` (what the server uses) sets ONNX Runtime's allow_spinning to 0 in
    every part's session, and changes no answer."""
    quiet, spinning = load(clip_bundle, spin_wait=False), load(clip_bundle)
    for name, part in quiet.parts.items():
        options = part.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0", name
    for name, part in spinning.parts.items():  # left unset: ONNX Runtime's default, which spins
        with pytest.raises(RuntimeError, match="does not have configuration with key"):
            part.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    np.testing.assert_allclose(quiet.embed_images(photos[:3]), spinning.embed_images(photos[:3]), atol=1e-6)
