"""SAM export: both parts match PyTorch at shapes other than the trace's, outputs are not
degenerate, and the manifest carries SAM's preprocessing as data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevfm.export.families.sam import ImageEncoder, PromptDecoder
from edgevfm.runtime.backends import OrtBackend

from helpers import assert_close


def test_manifest(sam_bundle):
    manifest = json.loads((sam_bundle / "manifest.json").read_text())
    assert manifest["family"] == "sam"
    assert manifest["preprocessing"]["resize"] == {"longest_edge": 128}
    assert manifest["preprocessing"]["pad"] == {"height": 128, "width": 128}
    assert manifest["preprocessing"]["interpolation"] == "bilinear"
    assert manifest["constants"] == {"input_size": 128, "low_res_size": 32, "mask_threshold": 0.0, "mask_outputs": 4}
    decoder = manifest["parts"]["prompt_decoder"]
    assert [i["name"] for i in decoder["inputs"]] == ["image_embeddings", "point_coords", "point_labels",
                                                      "mask_input", "has_mask_input"]
    assert decoder["inputs"][1]["shape"] == ["prompts", "points", 2]


def test_random_sam_is_not_degenerate(sam_checkpoint, photos):
    """SAM's default init (std 1e-10) makes every output ~0 and every parity test pass; the preset must not."""
    from edgevfm.runtime.image import preprocess

    pixels = torch.from_numpy(preprocess([photos[1]], {"resize": {"longest_edge": 128}, "pad": {"height": 128, "width": 128},
                                                      "interpolation": "bilinear", "rescale": 1 / 255,
                                                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    with torch.no_grad():
        embeddings = ImageEncoder(sam_checkpoint.model)(pixels)
        out = sam_checkpoint.model(image_embeddings=embeddings, input_points=torch.tensor([[[[60.0, 40.0]]]]),
                                   input_labels=torch.tensor([[[1]]]))
    assert embeddings.std() > 0.1
    assert out.pred_masks.abs().max() > 1e-2 and out.iou_scores.abs().max() > 1e-2


@pytest.mark.parametrize("window,qkv_bias", [(3, True), (3, False), (4, True)])
def test_windowed_layers_project_outside_the_windows_exactly(window, qkv_bias):
    """ImageEncoder runs a windowed layer's qkv and output projections on the image's tokens (not the
    padded windows'): transformers' encoder's numbers, with padding (8 tokens in windows of 3) and
    without, a qkv bias or none, and learned-looking relative positions (SAM's init leaves them 0)."""
    from transformers import SamConfig, SamModel

    config = SamConfig(vision_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=128,
                                          patch_size=16, output_channels=32, window_size=window,
                                          global_attn_indexes=[1], num_pos_feats=16, qkv_bias=qkv_bias,
                                          initializer_range=0.02))
    torch.manual_seed(0)
    model = SamModel(config).eval()
    with torch.no_grad():
        for layer in model.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_(), layer.attn.rel_pos_w.normal_()
            if qkv_bias:
                layer.attn.qkv.bias.normal_()
        pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
        got, want = ImageEncoder(model)(pixels), model.get_image_embeddings(pixels)
    assert want.abs().max() > 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_encoder_parity_at_batch_2(sam_bundle, sam_checkpoint):
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    got = OrtBackend(sam_bundle / "image_encoder.onnx").run({"pixel_values": pixels.numpy()})["image_embeddings"]
    with torch.no_grad():
        want = sam_checkpoint.model.get_image_embeddings(pixels).numpy()
    assert_close(got, want, 1e-3, 1e-3, "image embeddings")


@pytest.mark.parametrize("prompts,points", [(1, 1), (4, 3), (7, 6)])
def test_decoder_parity_at_other_prompt_counts(sam_bundle, sam_checkpoint, prompts, points):
    g = torch.Generator().manual_seed(prompts)
    labels = torch.randint(0, 2, (prompts, points), generator=g).float()
    labels[0, -1] = -1
    feeds = {"image_embeddings": torch.randn(1, 32, 8, 8, generator=g),
             "point_coords": torch.rand(prompts, points, 2, generator=g) * 128,
             "point_labels": labels,
             "mask_input": torch.randn(prompts, 1, 32, 32, generator=g),
             "has_mask_input": (torch.arange(prompts) % 2).float()}
    got = OrtBackend(sam_bundle / "prompt_decoder.onnx").run({k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        masks, scores = PromptDecoder(sam_checkpoint.model).eval()(*feeds.values())
    assert got["low_res_masks"].shape == (prompts, 4, 32, 32)
    assert_close(got["low_res_masks"], masks.numpy(), 1e-4, 1e-3, "mask logits")
    assert_close(got["iou_scores"], scores.numpy(), 1e-4, 1e-3, "IoU scores")
    assert np.abs(masks.numpy()).max() > 1e-3
