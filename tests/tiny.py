"""Tiny seeded diffusers pipelines built from configs and saved with save_pretrained (the path users take), plus
small real data sets (scikit-learn's digits) written in the formats `collect` reads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

WORDS = ["a", "digit", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "photo"]


def digits_folder(path: Path, count: int = 8, with_caption: bool = True, size: int = 16) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metadata.jsonl", "w") as f:
        for i in range(count):
            img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").resize((size, size))
            img.save(path / f"{i:04d}.png")
            row = {"file_name": f"{i:04d}.png", "label": int(d.target[i]), "subset": "base"}
            if with_caption:
                row["text"] = f"a digit {WORDS[2 + int(d.target[i])]}"
            f.write(json.dumps(row) + "\n")
    return path


def digits_parquet(path: Path, count: int = 6) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    pq.write_table(pa.table({"image": images, "label": [int(t) for t in d.target[:count]]}), path)
    return path


def _tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in chars + [c + "</w>" for c in chars] + [w + "</w>" for w in WORDS]:
        vocab.setdefault(tok, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _vae():  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        layers_per_block=1,
    )


def _clip(hidden: int = 16, projection: bool = False):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def ddpm(path: Path, conditional: bool = True, prediction_type: str = "epsilon") -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=10 if conditional else None,
    )
    DDPMPipeline(
        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type)
    ).save_pretrained(path)
    return path


def sd(path: Path, prediction_type: str = "epsilon") -> Path:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_clip(),
        tokenizer=_tokenizer(path / "_tok"),
        unet=unet,
        scheduler=DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def sd3(path: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    tr = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=8,
    )
    tok = _tokenizer(path / "_tok")
    pipe = StableDiffusion3Pipeline(
        transformer=tr,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(),
        text_encoder=_clip(projection=True),
        tokenizer=tok,
        text_encoder_2=_clip(projection=True),
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(path)
    return path


def dit(path: Path) -> Path:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    tr = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    DiTPipeline(transformer=tr, vae=_vae(), scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(path)
    return path
