"""Random-weight Stable Diffusion pipelines, for offline tests and the throughput benchmark.

``save_random_pipeline(dest, family, size)`` writes a complete diffusers pipeline directory (UNet, VAE,
CLIP text encoder(s), tokenizer(s), scheduler, ``model_index.json``) with random weights, which then
loads through exactly the code path real weights take (``tasks.synth.diffusion.load_pipeline``). No network,
no real weights: the tokenizer has a character-level vocabulary written here.

Sizes: ``tiny`` (a few hundred thousand parameters, runs on CPU in a second) and ``sd15`` (the UNet of
Stable Diffusion 1.5: 860 M parameters, the same work per step as the real model; text encoder and VAE
stay small, as the benchmark times the denoising loop).

diffusers and transformers are imported inside the functions: seconds to import, for tests and a benchmark only.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Literal

import torch

Family = Literal["sd", "sdxl"]
Size = Literal["tiny", "sd15"]

_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def write_char_tokenizer(dest: Path) -> None:
    """A CLIP BPE tokenizer with a character vocabulary and no merges (every character is one token)."""
    from transformers import CLIPTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    for s in _SPECIAL:
        vocab[s] = len(vocab)
    (dest / "vocab.json").write_text(json.dumps(vocab))
    (dest / "merges.txt").write_text("#version: 0.2\n")
    (dest / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"})
    )
    # loading from the files (not the constructor, whose arguments changed in transformers 5) and saving
    # again writes whatever files the installed transformers wants
    CLIPTokenizer.from_pretrained(dest).save_pretrained(dest)


def _text_encoder(hidden: int, projection: bool, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _unet(family: Family, size: Size, cross_dim: int, pooled_dim: int = 0):
    from diffusers import UNet2DConditionModel

    if size == "sd15":
        kw = dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            sample_size=64,
        )
    else:
        kw = dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            sample_size=32,
            norm_num_groups=16,
        )
    if family == "sdxl":
        # SDXL conditions on pooled text embeddings + (original size, crop, target size) time ids
        kw |= dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=pooled_dim + 6 * 8,
            use_linear_projection=True,
        )
    return UNet2DConditionModel(in_channels=4, out_channels=4, cross_attention_dim=cross_dim, **kw)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )


def save_random_pipeline(dest: str | Path, family: Family = "sd", size: Size = "tiny", seed: int = 0) -> Path:
    """Build a random-weight ``family`` pipeline of ``size`` and ``save_pretrained`` it to ``dest``."""
    from diffusers import (
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTokenizer

    dest = Path(dest)
    torch.manual_seed(seed)
    write_char_tokenizer(dest / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(dest / "_tokenizer")
    vocab = len(tokenizer)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    if family == "sd":
        hidden = 768 if size == "sd15" else 32
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(hidden, False, vocab),
            tokenizer=tokenizer,
            unet=_unet("sd", size, hidden),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        # two text encoders whose hidden states are concatenated (cross_dim), the second one pooled
        h1, h2 = (768, 1280) if size == "sd15" else (16, 16)
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(h1, False, vocab),
            text_encoder_2=_text_encoder(h2, True, vocab),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=_unet("sdxl", size, h1 + h2, pooled_dim=h2),
            scheduler=scheduler,
        )
    pipe.save_pretrained(dest)
    return dest
