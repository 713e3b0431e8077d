"""Caption and answer metrics against the COCO caption evaluation (pycocoevalcap's Bleu(4) and
Cider scorers gave the expected figures on these captions), VQA accuracy, and annotation folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgevfm.benchmarks.captions import bleu4, cider_d, read_annotations, vqa_accuracy

CANDIDATES = ["a cat sitting on a couch", "a man riding a horse in a field", "two dogs playing with a ball",
              "a plate of food"]
REFERENCES = [["a cat is sitting on the couch", "a cat on a sofa"],
              ["a man rides a brown horse", "a person riding a horse in a field"],
              ["two dogs play with a red ball", "dogs playing in the grass"],
              ["a plate with food and a fork", "food on a white plate"]]


def test_bleu4_and_cider_d_equal_the_coco_evaluation():
    # pycocoevalcap 1.2: Bleu(4).compute_score -> 0.4441989136101402 (its 1e-15 smoothing aside),
    # Cider().compute_score -> 2.6516453091036953
    assert bleu4(CANDIDATES, REFERENCES) == pytest.approx(0.4441989136101402, abs=1e-9)
    assert cider_d(CANDIDATES, REFERENCES) == pytest.approx(2.6516453091036953, abs=1e-9)


def test_identical_and_disjoint_captions():
    refs = [[c] for c in CANDIDATES]
    assert bleu4(CANDIDATES, refs) == pytest.approx(1.0)
    assert cider_d(CANDIDATES, refs) > 9.0  # 10 but for n-grams every caption shares (idf 0)
    assert bleu4(["zebra"] * 4, refs) == 0.0 and cider_d(["zebra"] * 4, refs) == 0.0


def test_vqa_accuracy_counts_humans_after_normalisation():
    humans = ["two", "2", "two", "Two.", "three"]
    assert vqa_accuracy("the two", humans) == 1.0  # three humans said "two" (case, article, stop dropped)
    assert vqa_accuracy("three", humans) == pytest.approx(1 / 3)
    assert vqa_accuracy("four", humans) == 0.0


def _photo(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)


def test_coco_captions_and_vqa_folders(tmp_path):
    coco = tmp_path / "coco"
    coco.mkdir()
    _photo(coco / "a.png", 0)
    _photo(coco / "COCO_val2014_000000000007.png", 1)
    (coco / "captions_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 1, "caption": "a kitten"}]}))
    task, items = read_annotations(coco)
    assert task == "caption" and [(i.image.name, i.truths) for i in items] == [("a.png", ["a cat", "a kitten"])]
    vqa = tmp_path / "vqa"
    vqa.mkdir()
    _photo(vqa / "COCO_val2014_000000000007.png", 1)
    (vqa / "questions.json").write_text(json.dumps({"questions": [{"image_id": 7, "question": "what?",
                                                                   "question_id": 70}]}))
    (vqa / "annotations.json").write_text(json.dumps({"annotations": [{"question_id": 70, "image_id": 7,
                                                                       "answers": [{"answer": "cat"}]}]}))
    task, items = read_annotations(vqa)
    assert task == "vqa" and items[0].question == "what?" and items[0].truths == ["cat"]
    assert items[0].image.name == "COCO_val2014_000000000007.png"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no annotations in .*: expected a COCO-captions JSON"):
        read_annotations(tmp_path / "empty")
    (coco / "a.png").unlink()
    with pytest.raises(ValueError, match="no image for image_id 1 under .*: expected a.png"):
        read_annotations(coco)


def test_token_ids_score_as_words_do():
    """Comparing two models' outputs needs no tokenizer: ids score as the words they stand for."""
    vocab = {w: i for i, w in enumerate(sorted({w for c in CANDIDATES + sum(REFERENCES, []) for w in c.split()}))}
    ids = [[vocab[w] for w in c.split()] for c in CANDIDATES]
    refs = [[[vocab[w] for w in r.split()] for r in item] for item in REFERENCES]
    assert bleu4(ids, refs) == pytest.approx(bleu4(CANDIDATES, REFERENCES))
    assert cider_d(ids, refs) == pytest.approx(cider_d(CANDIDATES, REFERENCES))
