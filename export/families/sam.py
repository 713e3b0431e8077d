"""SAM: two parts. ``image_encoder`` (pixels -> image embeddings, once per image) and
``prompt_decoder`` (image embeddings + any mix of points, one box and a previous low-res mask per
prompt -> low-res mask logits + IoU scores, for a dynamic number of prompts in one call)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..spec import FAMILIES, RESAMPLE_NAMES, FamilySpec, PartSpec, Preset, TensorSpec

MASK_OUTPUTS = 4  # mask 0: the single-mask answer; masks 1-3: the multimask answers


class ImageEncoder(nn.Module):
    """pixel_values (batch, 3, S, S) float32 -> image_embeddings (batch, C, S/16, S/16).

    A window-attention layer runs its qkv and output projections on the image's tokens, not on the
    padded windows' (SAM ViT-B: 64 x 64 tokens in windows of 14, padded to 70 x 70): the same
    numbers (a padding token is zeros after the norm, so its qkv is the bias; the output projection
    is per token, and the padding is cropped after it), 16% less work in those projections on every
    backend, and the qkv's INT8 input quantizer sits right on its MatMul: with the Pad in between,
    OpenVINO ran 7 of ViT-B's 8 windowed qkv layers in FP32 (``python -m edgevfm.benchmarks.profile``).
    Between the attentions the tokens stay (batch, H * W, C): OpenVINO laid transformers' 4-D
    (batch, H, W, C) out channels-blocked and reordered around each of the 24 layer norms, and ran
    the INT8 inputs' zero-point subtraction apart from their MatMuls (sam-ov-int8's encoder 2636 ->
    2383 ms in the profile, SAM ViT-B, 2 threads).
    """

    def __init__(self, model):
        super().__init__()
        self.encoder = model.vision_encoder

    def forward(self, pixel_values):
        encoder = self.encoder
        hidden = encoder.patch_embed(pixel_values)
        if encoder.pos_embed is not None:
            hidden = hidden + encoder.pos_embed
        batch, height, width, channels = hidden.shape
        hidden = hidden.reshape(batch, height * width, channels)
        for layer in encoder.layers:
            hidden = _layer(layer, hidden, height, width)
        return encoder.neck(hidden.reshape(batch, height, width, channels))


def _layer(layer, hidden, height, width):
    """transformers' SamVisionLayer on (batch, tokens, C), the projections outside the windows (see
    ImageEncoder)."""
    attn, size = layer.attn, layer.window_size
    batch, tokens, channels = hidden.shape
    qkv = attn.qkv(layer.layer_norm1(hidden)).reshape(batch, height, width, -1)
    if size > 0:
        padded = attn.qkv.bias is not None and bool(height % size or width % size)
        windows, padding = layer.window_partition(qkv - attn.qkv.bias if padded else qkv, size)
        if padded:  # the padding tokens' qkv is the bias
            windows = windows + attn.qkv.bias
        out = layer.window_unpartition(_attention(attn, windows), size, padding, (height, width))
    else:
        out = _attention(attn, qkv)
    hidden = hidden + attn.proj(out.reshape(batch, tokens, channels))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def _attention(attn, qkv):
    """SamVisionAttention after its qkv projection and before its output projection:
    (windows, h, w, 3 * C) -> (windows, h, w, C)."""
    batch, height, width, _ = qkv.shape
    heads = attn.num_attention_heads
    qkv = qkv.reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.reshape(3, batch * heads, height * width, -1).unbind(0)
    weights = (query * attn.scale) @ key.transpose(-2, -1)
    if attn.use_rel_pos:
        weights = weights + attn.get_decomposed_rel_pos(query, attn.rel_pos_h, attn.rel_pos_w, (height, width),
                                                        (height, width)).reshape_as(weights)
    out = (torch.softmax(weights, dim=-1) @ value).reshape(batch, heads, height, width, -1)
    return out.permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)


class PromptDecoder(nn.Module):
    """One image's embeddings and P prompts -> P x 4 low-res mask logits and IoU scores.

    point_coords (P, N, 2) float32: x, y in the resized-and-padded input frame (S x S pixels).
    point_labels (P, N) float32: 1 foreground, 0 background, 2 / 3 box top-left / bottom-right,
    -1 padding (SAM appends one padding point when a prompt has no box).
    mask_input (P, 1, 4h, 4w) float32: a previous low-res logit mask; used where has_mask_input (P,) is 1.
    Each prompt is its own batch entry, so every prompt can carry its own mask input.

    transformers' two-way transformer runs here on 3-D tokens (P, tokens, C), with the image-wide
    positional embedding stored in that layout, instead of its 4-D (P, 1, tokens, C) and a
    (P, C, h, w) embedding flattened and transposed on every call: the same numbers, and OpenVINO's
    INT8 decoder no longer transposes the positional embedding or splits heads around a 4-D layout
    (where the decoder's time goes: ``python -m edgevfm.benchmarks.profile BUNDLE --part
    prompt_decoder`` on an ov-int8 bundle).
    """

    def __init__(self, model):
        super().__init__()
        self.prompt, self.decoder = model.prompt_encoder, model.mask_decoder
        self.input_size = float(model.config.prompt_encoder_config.image_size)
        with torch.no_grad():
            pe = model.get_image_wide_positional_embeddings()  # (1, C, h, w)
            self.register_buffer("image_pe", pe.flatten(2).transpose(1, 2).contiguous())  # (1, h * w, C)

    def embed_points(self, coords, labels):
        pe = self.prompt.shared_embedding((coords + 0.5) / self.input_size)
        labels = labels[..., None]
        pe = torch.where(labels == -1, self.prompt.not_a_point_embed.weight, pe)
        for k, embed in enumerate(self.prompt.point_embed):
            pe = pe + (labels == k).to(pe.dtype) * embed.weight
        return pe

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        prompts = point_coords.shape[0]
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.prompt.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * self.prompt.mask_embed(mask_input) + (1 - has) * no_mask
        d = self.decoder
        tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0).expand(prompts, -1, -1)
        tokens = torch.cat([tokens, self.embed_points(point_coords, point_labels)], dim=1)  # (P, T, C)
        src = image_embeddings + dense
        _, channels, height, width = src.shape
        queries, keys = _two_way(d.transformer, tokens, src.flatten(2).transpose(1, 2), self.image_pe)
        iou_token, mask_tokens = queries[:, 0, :], queries[:, 1:1 + d.num_mask_tokens, :]
        src = keys.transpose(1, 2).reshape(prompts, channels, height, width)
        up = d.activation(d.upscale_layer_norm(d.upscale_conv1(src)))
        up = d.activation(d.upscale_conv2(up))
        hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(d.output_hypernetworks_mlps)], dim=1)
        _, up_channels, up_h, up_w = up.shape
        masks = (hyper @ up.reshape(prompts, up_channels, up_h * up_w)).reshape(prompts, -1, up_h, up_w)
        return masks, d.iou_prediction_head(iou_token)


def _two_way(transformer, tokens, keys, pe):
    """transformers' SamTwoWayTransformer on tokens (P, T, C) and image tokens (P, h * w, C) with
    their positional embedding (1, h * w, C) -> (queries, keys) in the same layouts."""
    queries = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:  # the first layer's self-attention replaces the tokens
            queries = _attend(layer.self_attn, queries, queries, queries)
        else:
            query = queries + tokens
            queries = queries + _attend(layer.self_attn, query, query, queries)
        queries = layer.layer_norm1(queries)
        key = keys + pe
        queries = layer.layer_norm2(queries + _attend(layer.cross_attn_token_to_image, queries + tokens, key, keys))
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        keys = layer.layer_norm4(keys + _attend(layer.cross_attn_image_to_token, key, queries + tokens, queries))
    out = _attend(transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys)
    return transformer.layer_norm_final_attn(queries + out), keys


def _attend(attn, query, key, value):
    """SamAttention on (P, n, C) inputs, heads split from the projections' (P, n, C') outputs."""
    query, key, value = attn.q_proj(query), attn.k_proj(key), attn.v_proj(value)
    prompts, tokens, inner = query.shape
    heads = attn.num_attention_heads

    def split(x):
        return x.reshape(prompts, x.shape[1], heads, -1).transpose(1, 2)

    weights = torch.softmax((split(query) @ split(key).transpose(-1, -2)) * attn.scaling, dim=-1)
    return attn.out_proj((weights @ split(value)).transpose(1, 2).reshape(prompts, tokens, inner))


def _tiny() -> dict:
    return {"vision": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=128, patch_size=16,
                           output_channels=32, window_size=4, global_attn_indexes=[1], num_pos_feats=16),
            "prompt": dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
            "decoder": dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)}


@FAMILIES.register("sam")
class SamSpec(FamilySpec):
    name = "sam"
    model_types = ("sam",)
    required_files = (("preprocessor_config.json", "processor_config.json"),)
    presets = {
        "sam-tiny": Preset("sam-tiny", "tiny SAM for tests (128 px input)", _tiny(), seed=0),
        "sam-vit-b": Preset("sam-vit-b", "facebook/sam-vit-base sizes, random weights",
                            {"vision": {}, "prompt": {}, "decoder": {}}, seed=0),
        "sam-shapes": Preset("sam-shapes", "small SAM trained here on generated scenes (training/sam_shapes.py)",
                             {}, trained=True, folder="sam-shapes"),
    }

    def load_pretrained(self, source, revision):
        from transformers import SamImageProcessorPil, SamModel

        model = SamModel.from_pretrained(source, revision=revision, attn_implementation="eager")
        return model, {"image_processor": SamImageProcessorPil.from_pretrained(source, revision=revision)}

    def random_config(self, preset):
        from transformers import SamConfig

        # SAM's vision config initialises with std 1e-10 by default: every output ~0 and every
        # parity test passing meaninglessly. 0.02 is the usual ViT range.
        vision = dict(preset.config["vision"], initializer_range=0.02)
        config = SamConfig(vision_config=vision, prompt_encoder_config=preset.config["prompt"],
                           mask_decoder_config=preset.config["decoder"], initializer_range=0.02)
        config._attn_implementation = "eager"
        return config, {}

    def build_random(self, preset):
        from transformers import SamImageProcessorPil, SamModel

        config, _ = self.random_config(preset)
        torch.manual_seed(preset.seed)
        model = SamModel(config)
        # With N(0, 0.02) everywhere the decoder's logits come out ~1e-5: thresholds and parity
        # would be meaningless. PyTorch's default (fan-in scaled) init keeps them of order one.
        for module in (model.prompt_encoder, model.mask_decoder):
            for layer in module.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    layer.reset_parameters()
        size = config.vision_config.image_size
        processor = SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                         mask_size={"longest_edge": size // 4},
                                         mask_pad_size={"height": size // 4, "width": size // 4})
        return model, {"image_processor": processor}

    def parts(self, checkpoint):
        config = checkpoint.model.config
        size = config.vision_config.image_size
        channels, grid = config.vision_config.output_channels, config.prompt_encoder_config.image_embedding_size
        low = 4 * grid

        def pixels(batch, variant):
            return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(variant))}

        def prompts(batch, variant):
            g = torch.Generator().manual_seed(variant)
            points = 3 if variant == 0 else 5
            labels = torch.randint(0, 2, (batch, points), generator=g).float()
            labels[0, -1] = -1  # a padding point
            if points >= 4:
                labels[-1, -2:] = torch.tensor([2.0, 3.0])  # a box on the last prompt
            return {"image_embeddings": torch.randn(1, channels, grid, grid, generator=g),
                    "point_coords": torch.rand(batch, points, 2, generator=g) * size,
                    "point_labels": labels,
                    "mask_input": torch.randn(batch, 1, low, low, generator=g),
                    "has_mask_input": (torch.arange(batch) % 2).float()}

        return [
            PartSpec("image_encoder", ImageEncoder,
                     [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                     [TensorSpec("image_embeddings", "float32", ("batch", channels, grid, grid))], pixels,
                     atol=1e-3, trace_batch=1, check_batch=2),
            PartSpec("prompt_decoder", PromptDecoder,
                     [TensorSpec("image_embeddings", "float32", (1, channels, grid, grid)),
                      TensorSpec("point_coords", "float32", ("prompts", "points", 2)),
                      TensorSpec("point_labels", "float32", ("prompts", "points")),
                      TensorSpec("mask_input", "float32", ("prompts", 1, low, low)),
                      TensorSpec("has_mask_input", "float32", ("prompts",))],
                     [TensorSpec("low_res_masks", "float32", ("prompts", MASK_OUTPUTS, low, low)),
                      TensorSpec("iou_scores", "float32", ("prompts", MASK_OUTPUTS))], prompts,
                     atol=1e-4, rtol=1e-3),
        ]

    def manifest_sections(self, checkpoint):
        proc, config = checkpoint.assets["image_processor"], checkpoint.model.config
        size = config.vision_config.image_size
        return {
            "preprocessing": {
                "resize": {"longest_edge": int(proc.size.longest_edge if hasattr(proc.size, "longest_edge") else size)},
                "crop": None,
                "pad": {"height": size, "width": size} if proc.do_pad else None,
                "interpolation": RESAMPLE_NAMES[int(proc.resample)],
                "rescale": float(proc.rescale_factor) if proc.do_rescale else 1.0,
                "mean": list(proc.image_mean), "std": list(proc.image_std), "convert_rgb": True,
            },
            "constants": {"input_size": size, "low_res_size": 4 * config.prompt_encoder_config.image_embedding_size,
                          "mask_threshold": 0.0, "mask_outputs": MASK_OUTPUTS},
        }

    def write_assets(self, checkpoint, stage: Path):
        pass  # SAM needs no tokenizer; preprocessing is in the manifest
