#!/usr/bin/env python
"""Collection throughput and memory against references measured in the same run on the same model (JSON last).

Each measurement runs in its own process (so each peak RSS is its own), on the same data, after a warm-up pass:
  collect    the real path (prepare + collect, storage included) at the chosen --batch-size B (default: auto)
  engine     the gradient engine alone (no project, no storage, no image decoding: each sample's x0 and condition
             prepared before the clock starts), on the same samples × K timesteps three ways, timed pass by pass:
               batched  B samples × K timesteps a pass (what collect runs)
               b1       one sample, its K timesteps, a pass (--batch-size 1)
               example  one (sample, timestep) a pass: the engine before batching (an engine per timestep, K = 1)
  training   a plain training step at the same B×K examples: forward + backward with the selected parameters
             requiring grad, no optimizer, no hooks — the reference for speed and memory
Keys: sample-timesteps per second (`*_st_per_s`); batched_speedup = engine batched ÷ engine example and
batched_speedup_vs_b1 = engine batched ÷ engine b1 (the same examples, the same fixed costs: none); vs_training =
collect ÷ training (the real path against a bare training step); the memory passes add (CPU: the RSS high-water mark
over warm-up and timed passes minus the RSS once the model, the compressor's kernel and Arrow are loaded; CUDA: max
allocated) for collect and training, and the bound collect must stay under: training's + B×K × the largest
selected parameter (float32) + the compressor's state. Measurements run in interleaved rounds (--rounds): speeds are
the best of each, memory figures the highest. Kept from earlier versions: collect_s_per_step, bare_s_per_step
(= training), overhead_ratio, compression_share, peak_rss_mb, bare_peak_rss_mb, model_mb, grad_mb, peak_gpu_mb.

Presets: digits (the bundled 652k-parameter DDPM), small (an SD-style UNet, ~80M), sd15, sdxl, sd3m, flux (real
sizes, random weights; for a GPU: --device cuda --dtype bfloat16). --lora R adds a rank-R LoRA on the attention
projections (or the convs of a UNet without attention) and takes gradients of it only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
UNET_SD15 = {
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "sample_size": 64,
    "attention_head_dim": 8,
    "layers_per_block": 2,
}
PRESETS: dict[str, dict] = {
    "digits": {"family": "digits"},
    "small": {
        "family": "sd",
        "unet": {
            "block_out_channels": (128, 256, 512, 512),
            "cross_attention_dim": 512,
            "sample_size": 32,
            "attention_head_dim": 8,
            "layers_per_block": 2,
        },
    },
    "sd15": {"family": "sd", "unet": UNET_SD15},
    "sdxl": {
        "family": "sdxl",
        "unet": {
            "sample_size": 128,
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
            "layers_per_block": 2,
        },
    },
    "sd3m": {
        "family": "sd3",
        "transformer": {
            "sample_size": 64,
            "patch_size": 2,
            "in_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "out_channels": 16,
            "pos_embed_max_size": 192,
        },
    },
    "flux": {
        "family": "flux",
        "transformer": {
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": True,
            "axes_dims_rope": (16, 56, 56),
        },
        "resolution": 512,
    },
}


def _tokenizer(out: Path, length: int = 77):  # type: ignore[no-untyped-def]
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "photo</w>": 3}
    (out / "tok").mkdir(parents=True, exist_ok=True)
    (out / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (out / "tok" / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(out / "tok" / "vocab.json"), str(out / "tok" / "merges.txt"), model_max_length=length)


def _clip(hidden: int, projection: bool = False):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=8, hidden_size=hidden, projection_dim=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(latent: int, **extra):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        layers_per_block=1, **extra,
    )


def build(preset: str, out: Path) -> tuple[Path, int]:
    """Save the preset's pipeline under out/model; returns (model dir, image size in pixels)."""
    import diffusers

    cfg = PRESETS[preset]
    fam = cfg["family"]
    if fam == "digits":
        return ROOT / "dmin" / "assets" / "digits-ddpm", 16
    torch.manual_seed(0)
    dtype = torch.float32 if preset == "small" else torch.bfloat16  # halves what GPU presets save and load
    if fam in ("sd", "sdxl"):
        u = cfg["unet"]
        unet = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **u).to(dtype)
        sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        if fam == "sd":
            pipe = diffusers.StableDiffusionPipeline(
                vae=_vae(4), text_encoder=_clip(u["cross_attention_dim"]), tokenizer=_tokenizer(out), unet=unet,
                scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        else:
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=_vae(4, scaling_factor=0.13025), text_encoder=_clip(768), text_encoder_2=_clip(1280, True),
                tokenizer=_tokenizer(out), tokenizer_2=_tokenizer(out),
                unet=unet, scheduler=diffusers.EulerDiscreteScheduler.from_config(sched.config),
            )
        size = 8 * u["sample_size"]
    elif fam == "sd3":
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=diffusers.SD3Transformer2DModel(**cfg["transformer"]).to(dtype),
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(16),
            text_encoder=_clip(768, True), tokenizer=_tokenizer(out), text_encoder_2=_clip(1280, True),
            tokenizer_2=_tokenizer(out), text_encoder_3=None, tokenizer_3=None,
        )
        size = 8 * cfg["transformer"]["sample_size"]
    else:
        from transformers import T5Config, T5EncoderModel

        sys.path.insert(0, str(ROOT))
        from tests.tiny import _t5_tokenizer

        t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=4096, d_ff=64, d_kv=64, num_layers=1, num_heads=8))
        pipe = diffusers.FluxPipeline(
            transformer=diffusers.FluxTransformer2DModel(**cfg["transformer"]).to(dtype),
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
            vae=_vae(16, shift_factor=0.1159, scaling_factor=0.3611), text_encoder=_clip(768),
            tokenizer=_tokenizer(out), text_encoder_2=t5, tokenizer_2=_t5_tokenizer(),
        )
        size = cfg["resolution"]
    pipe.save_pretrained(out / "model")
    return out / "model", size


def make_lora(model: Path, out: Path, rank: int) -> Path:
    """A rank-r LoRA in diffusers' format on the attention projections (the convs of an attention-free UNet)."""
    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    index = json.loads((model / "model_index.json").read_text())
    prefix = "unet" if "unet" in index else "transformer"
    den = getattr(diffusers, index[prefix][1]).from_pretrained(str(model / prefix))
    names = {n.rsplit(".", 1)[-1] for n, _ in den.named_modules()}
    targets = [t for t in ("to_q", "to_k", "to_v") if t in names] or ["conv1", "conv2"]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
    inject_adapter_in_model(config, den)
    for name, p in den.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    state = {f"{prefix}.{k}": v.contiguous() for k, v in get_peft_model_state_dict(den).items()}
    meta = {f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    header = {"lora_adapter_metadata": json.dumps(meta)}
    save_file(state, str(out / "pytorch_lora_weights.safetensors"), metadata=header)
    return out


def make_data(out: Path, size: int, count: int, digits: bool) -> Path:
    if digits:
        from dmin.demo import write_digits

        return write_digits(out, limit=count)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(out / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": "a photo"}))
    (out / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> float:
    """Start a fresh RSS high-water mark (Linux: clear_refs 5); returns the RSS now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    return _status_mb("VmRSS")


def engine_rates(setup, data: Path, count: int, B: int, sync) -> dict:  # type: ignore[no-untyped-def]
    """Sample-timesteps per second of the gradient engine alone over the same `count` samples × K timesteps:
    batched (B samples a pass), b1 (one sample a pass) and example (one (sample, timestep) a pass)."""
    from dataclasses import replace

    from dmin.data import load_dataset
    from dmin.gradients import GradientEngine
    from dmin.models import Condition

    fam, K = setup.family, setup.identity.K
    prepared = []
    for rec in load_dataset(data).records[: count + B]:  # B more: the warm-up pass
        pixels = fam.pixels(rec.image())
        prepared.append((fam.encode_image(pixels), fam.encode_condition(rec.caption, rec.label, pixels)))
    warm, timed = prepared[:B], prepared[B:]

    def passes(engine: GradientEngine, items: list, size: int) -> float:
        engine.run(torch.cat([x for x, _ in warm[:size]]), Condition.cat([c for _, c in warm[:size]]))
        sync()
        start = time.perf_counter()
        for lo in range(0, len(items), size):
            part = items[lo : lo + size]
            engine.run(torch.cat([x for x, _ in part]), Condition.cat([c for _, c in part]))
        sync()
        return time.perf_counter() - start

    engine = GradientEngine(setup)
    batched = passes(engine, timed, B)
    b1 = passes(engine, timed, 1)
    engine.close()
    example = 0.0
    for t in setup.identity.timesteps:  # one engine per timestep: each pass is one (sample, timestep) example
        one = replace(setup, identity=replace(setup.identity, timesteps=(t,), t_indices=(0,)))
        engine = GradientEngine(one)
        example += passes(engine, timed, 1)
        engine.close()
    st = len(timed) * K
    return {"engine_st_per_s": st / batched, "engine_b1_st_per_s": st / b1, "engine_example_st_per_s": st / example}


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process."""
    from dmin.collect import collect
    from dmin.gradients import prepare

    root = Path(args.root)
    K = args.timesteps
    lora = root / "lora" if (root / "lora").exists() else None
    setup = prepare(
        args.model, lora=lora, timesteps=K, vs=[str(args.v)], device=args.device, dtype=args.dtype,
        resolution=args.resolution,
    )
    cuda = setup.device.type == "cuda"
    n = setup.identity.n
    largest = max(p.numel() for _, p in setup.params)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out: dict = {"n": n, "largest_param": largest}
    # The model is loaded; load what both paths load lazily (the compressor's kernel, Arrow), then start counting:
    # pass_rss_mb is the high-water mark of everything after this point, warm-up passes included.
    setup.compressor.stream_batch(min(args.v, setup.compressor.D), 1).add(0, torch.zeros(1, min(n, 64)))
    import pyarrow as pa

    pa.table({"x": [1]})
    out["rss_before_mb"] = reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if args.child == "training":
        from dmin.data import load_dataset

        fam = setup.family
        B = args.batch
        rec = load_dataset(root / "data").records[0]
        pixels = fam.pixels(rec.image())
        x0 = fam.encode_image(pixels).repeat(B * K, 1, 1, 1)
        cond = fam.encode_condition(rec.caption, rec.label, pixels).repeat(B * K)
        t = torch.tensor(setup.identity.timesteps, dtype=torch.float64, device=setup.device).repeat(B)
        for _, p in setup.params:
            p.requires_grad_(True)
        ctx = torch.autocast(setup.device.type, dtype=setup.autocast) if setup.autocast else None

        def step() -> None:
            x_t, target = fam.noisy_and_target(x0, torch.randn_like(x0), t)
            if ctx is not None:
                with ctx:
                    pred = fam.predict(x_t, t, cond)
            else:
                pred = fam.predict(x_t, t, cond)
            torch.nn.functional.mse_loss(pred.float(), target.float()).backward()
            for _, p in setup.params:
                p.grad = None

        step()
        sync()
        steps = args.repeat
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out["st_per_s"] = steps * B * K / (time.perf_counter() - start)
    elif args.child == "engine":
        out.update(engine_rates(setup, root / "data", args.samples, int(args.batch), sync))
    else:
        batch = args.batch_size
        data = root / "data"
        # two whole passes first: the allocator, numba's threads and Arrow's pools reach their steady state
        warm_count = 2 * (int(batch) if str(batch).isdigit() else 1)
        warm = collect(root / f"warm-{args.child}", setup, data, limit=warm_count, batch_size=batch)
        sync()
        count = args.samples
        start = time.perf_counter()
        s = collect(root / f"proj-{args.child}", setup, data, limit=count, batch_size=batch)
        sync()
        out["st_per_s"] = s.done * K / (time.perf_counter() - start)
        out["batch_size"] = s.batch_size or warm.batch_size
        rows = out["batch_size"] * K
        out["compressor_mb"] = rows * (args.v + 32) * 8 / 2**20
    out["peak_rss_mb"] = peak_rss_mb()
    out["pass_rss_mb"] = _status_mb("VmHWM") - out["rss_before_mb"]
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits", choices=sorted(PRESETS))
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--v", type=int, default=4096)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full parameters)")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--samples", type=int, default=0, help="samples timed at the chosen B (default: 4 passes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all measurements (best of each)")
    ap.add_argument("--json", action="store_true")
    for hidden in ("--child", "--root", "--model", "--batch", "--repeat", "--resolution"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.batch = int(args.batch or 1)
        args.repeat = int(args.repeat or 3)
        args.samples = int(args.samples)
        args.resolution = int(args.resolution) if args.resolution else None
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, size = build(args.preset, root)
        if args.lora:
            make_lora(model, root / "lora", args.lora)
        res = PRESETS[args.preset].get("resolution")

        def run(mode: str, **extra: object) -> dict:
            cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--model", str(model),
                   "--timesteps", str(args.timesteps), "--v", str(args.v), "--device", args.device, "--dtype",
                   args.dtype, "--batch-size", str(args.batch_size)]
            if res:
                cmd += ["--resolution", str(res)]
            for key, value in extra.items():
                cmd += [f"--{key}", str(value)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        make_data(root / "data", size, 256, args.preset == "digits")
        probe = run("collect", samples=2)  # what auto chooses, and a warm compile cache
        B = probe["batch_size"]
        args.batch_size = str(B)
        samples = args.samples or 4 * B
        modes = {
            "collect": {"samples": samples},
            "training": {"batch": B, "repeat": max(2, min(10, samples // B))},
            "engine": {"samples": samples, "batch": B},
        }
        # Interleaved rounds: this machine's load changes by the minute, and a ratio of two measurements taken
        # minutes apart measures the load instead. Speeds: the best round's; memory: the highest round's.
        rounds = [{mode: run(mode, **kw) for mode, kw in modes.items()} for _ in range(args.rounds)]
        best = {mode: max((r[mode] for r in rounds), key=lambda m: m["st_per_s"]) for mode in ("collect", "training")}
        runs = {mode: {**m, **{k: max(r[mode][k] for r in rounds) for k in m if "rss" in k or "gpu" in k}}
                for mode, m in best.items()}
        eng = {k: max(r["engine"][k] for r in rounds) for k in rounds[0]["engine"] if k.endswith("_st_per_s")}
    c, tr = runs["collect"], runs["training"]
    R = B * args.timesteps
    n = c["n"]
    extra = R * c["largest_param"] * 4 / 2**20 + c["compressor_mb"]  # what batching may add beyond training
    bound = tr["pass_rss_mb"] + extra
    result = {
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "lora_rank": args.lora,
        "n_params": n,
        "K": args.timesteps,
        "v": args.v,
        "batch_size": B,
        "examples_per_pass": R,
        "collect_st_per_s": c["st_per_s"],
        "engine_st_per_s": eng["engine_st_per_s"],
        "b1_st_per_s": eng["engine_b1_st_per_s"],
        "example_st_per_s": eng["engine_example_st_per_s"],
        "training_st_per_s": tr["st_per_s"],
        "batched_speedup": eng["engine_st_per_s"] / eng["engine_example_st_per_s"],
        "batched_speedup_vs_b1": eng["engine_st_per_s"] / eng["engine_b1_st_per_s"],
        "vs_training": c["st_per_s"] / tr["st_per_s"],
        "collect_s_per_step": 1 / c["st_per_s"],
        "bare_s_per_step": 1 / tr["st_per_s"],
        "overhead_ratio": tr["st_per_s"] / c["st_per_s"],
        "compression_share": 1 - c["st_per_s"] / tr["st_per_s"],
        "peak_rss_mb": c["peak_rss_mb"],
        "bare_peak_rss_mb": tr["peak_rss_mb"],
        "pass_rss_mb": c["pass_rss_mb"],
        "training_pass_rss_mb": tr["pass_rss_mb"],
        "memory_bound_mb": bound,
        "within_memory_bound": c["pass_rss_mb"] <= bound,
        "largest_param_mb": c["largest_param"] * 4 / 2**20,
        "model_mb": n * 4 / 2**20,
        "grad_mb": n * 4 / 2**20,
    }
    if "peak_gpu_mb" in c:
        gpu_bound = tr["peak_gpu_mb"] + extra
        result.update(
            peak_gpu_mb=c["peak_gpu_mb"], bare_peak_gpu_mb=tr["peak_gpu_mb"], gpu_memory_bound_mb=gpu_bound,
            within_gpu_memory_bound=c["peak_gpu_mb"] <= gpu_bound,
        )
    if not args.json:
        for k, val in result.items():
            print(f"{k:>24}: {val:.4g}" if isinstance(val, float) else f"{k:>24}: {val}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
