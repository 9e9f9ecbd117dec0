"""Tiny seeded diffusers pipelines built from configs and saved with save_pretrained (the path users take), plus
small real data sets (scikit-learn's digits) written in the formats `collect` reads."""

from __future__ import annotations

import hashlib
import io
import json
import os
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


def hub_cache(cache: Path, repo: str, src: Path, revision: str = "main") -> str:
    """Lay `src` out as huggingface_hub's cache does (blobs named by content hash, a snapshot of symlinks, a ref);
    returns the snapshot's commit id."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return commit


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


# Scheduler configs as the real repositories ship them (scheduler/scheduler_config.json), minus version keys.
SD15_SCHEDULER = {  # runwayml/stable-diffusion-v1-5
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_SCHEDULER = {  # stabilityai/stable-diffusion-2-1 (768, v-prediction)
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_SCHEDULER = {  # stabilityai/stable-diffusion-xl-base-1.0
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_DEV_SCHEDULER = {  # black-forest-labs/FLUX.1-dev
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
DIT_SCHEDULER = {  # facebook/DiT-XL-2-256
    "_class_name": "DDIMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "trained_betas": None,
}


def scheduler(config: dict):  # type: ignore[no-untyped-def]
    import diffusers

    cfg = dict(config)
    return getattr(diffusers, cfg.pop("_class_name")).from_config(cfg)


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


def _t5_tokenizer():  # type: ignore[no-untyped-def]
    """A T5TokenizerFast over a tiny Unigram vocabulary (the real one is a SentencePiece Unigram model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=512,
    )


def _t5(d_model: int = 32):  # type: ignore[no-untyped-def]
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=64, d_model=d_model, d_ff=2 * d_model, d_kv=8, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, decoder_start_token_id=0,
        )
    )


def _vae(latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor: float | None = None,
         quant_conv: bool = True):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=16,
        layers_per_block=1,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def _clip(hidden: int = 16, projection: bool = False, layers: int = 1):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
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


def _sd_unet(cross_attention_dim: int = 16, **extra):  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=4,
        attention_head_dim=2,
        **extra,
    )


def sd15(path: Path, scheduler_config: dict | None = None) -> Path:
    """StableDiffusionPipeline as SD 1.5 ships it (PNDM; VAE scaling 0.18215), shrunk; `scheduler_config` saves
    the same weights with another scheduler."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_clip(),
        tokenizer=_tokenizer(path.parent / f"_tok-{path.name}"),
        unet=_sd_unet(),
        scheduler=scheduler(scheduler_config or SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(path)
    return path


def sd21(path: Path) -> Path:
    """SD 2.1 (768): DDIM with v_prediction."""
    return sd15(path, SD21_SCHEDULER)


def sdxl(path: Path) -> Path:
    """StableDiffusionXLPipeline as SDXL base ships it (EulerDiscrete, leading spacing; VAE scaling 0.13025; two
    CLIP text encoders, the second with projection; text_time micro-conditioning), shrunk."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(0)
    tok = _tokenizer(path.parent / f"_tok-{path.name}")
    unet = _sd_unet(
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
    )
    StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=_clip(16, layers=2),
        text_encoder_2=_clip(16, projection=True, layers=2),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=scheduler(SDXL_SCHEDULER),
    ).save_pretrained(path)
    return path


def sd3(path: Path, version: str = "3") -> Path:
    """StableDiffusion3Pipeline as SD3-medium ships it (FlowMatchEuler shift 3.0; VAE with 16 latent channels,
    scaling 1.5305, shift 0.0609), shrunk, without text_encoder_3. version "3.5": SD 3.5 medium's qk-norm and
    dual-attention blocks (from the transformer config)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    extra: dict = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)} if version == "3.5" else {}
    tr = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=2 if extra else 1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=16,
        pos_embed_max_size=8,
        **extra,
    )
    tok = _tokenizer(path.parent / f"_tok-{path.name}")
    StableDiffusion3Pipeline(
        transformer=tr,
        scheduler=scheduler(SD3_SCHEDULER),
        vae=_vae(16, 1.5305, 0.0609, quant_conv=False),
        text_encoder=_clip(projection=True),
        tokenizer=tok,
        text_encoder_2=_clip(projection=True),
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    ).save_pretrained(path)
    return path


def flux(path: Path, dev: bool = True) -> Path:
    """FluxPipeline as FLUX.1-dev ships it (FlowMatchEuler shift 3.0 with dynamic shifting 0.5–1.15 over image
    sequence lengths 256–4096; VAE with 16 latent channels, scaling 0.3611, shift 0.1159, no quant convs;
    guidance_embeds), shrunk; dev=False: FLUX.1-schnell (no guidance input, shift 1.0)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=dev,
        axes_dims_rope=(4, 6, 6),
    )
    FluxPipeline(
        transformer=tr,
        scheduler=scheduler(FLUX_DEV_SCHEDULER if dev else FLUX_SCHNELL_SCHEDULER),
        vae=_vae(16, 0.3611, 0.1159, quant_conv=False),
        text_encoder=_clip(16),
        tokenizer=_tokenizer(path.parent / f"_tok-{path.name}"),
        text_encoder_2=_t5(32),
        tokenizer_2=_t5_tokenizer(),
    ).save_pretrained(path)
    return path


def dit(path: Path) -> Path:
    from diffusers import DiTPipeline, DiTTransformer2DModel

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
    DiTPipeline(transformer=tr, vae=_vae(), scheduler=scheduler(DIT_SCHEDULER)).save_pretrained(path)
    return path


LORA_TARGETS = ("to_q", "to_k", "to_v", "conv1", "conv2", "proj_mlp")


def lora(model: Path, out: Path, rank: int = 2, alpha: int = 3) -> Path:
    """A LoRA on the model's denoiser, as diffusers saves one: `{unet|transformer}.`-prefixed PEFT keys and the
    per-component `lora_alpha` metadata; lora_B random so gradients reach lora_A."""
    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    index = json.loads((model / "model_index.json").read_text())
    prefix = "unet" if "unet" in index else "transformer"
    denoiser = getattr(diffusers, index[prefix][1]).from_pretrained(str(model / prefix))
    names = {n.rsplit(".", 1)[-1] for n, _ in denoiser.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    inject_adapter_in_model(config, denoiser)
    torch.manual_seed(2)
    for name, p in denoiser.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    state = {f"{prefix}.{k}": v.contiguous() for k, v in get_peft_model_state_dict(denoiser).items()}
    body = {f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    meta = {"lora_adapter_metadata": json.dumps(body)}  # what save_lora_weights writes from a LoraConfig
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "pytorch_lora_weights.safetensors"), metadata=meta)
    return out
