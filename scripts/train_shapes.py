"""Train the bundled shapes-world models: VAE first, then UNet + CLIP text encoder, on CPU (or GPU).

    python scripts/train_shapes.py vae  --minutes 20            # /4 VAE on rendered scenes
    python scripts/train_shapes.py latents                      # encode the training scenes once
    python scripts/train_shapes.py unet --minutes 90            # UNet + text encoder on the latents
    python scripts/train_shapes.py export                       # -> minip2p/data/shapes.safetensors (fp16)

The MM-DiT (SD3-family) sibling, on the shipped model's VAE and text encoder (both frozen):
    python scripts/train_shapes.py latents --vae bundled --arch mmdit
    python scripts/train_shapes.py mmdit --minutes 85           # flow matching
    python scripts/train_shapes.py export --arch mmdit          # -> minip2p/data/shapes-mmdit.safetensors
    python scripts/train_shapes.py keep                         # -> scripts/shapes-mmdit-run.safetensors
    python scripts/train_shapes.py mmdit --start scripts/shapes-mmdit-run.safetensors   # a fresh checkout
The MM-DiT takes more steps than one session's CPU time, and a session's run folder does not outlive it:
`keep` writes the run's weights (fp16, without AdamW's moments) to a file in the repository, and `--start`
goes on from there.

Seeded and resumable: every phase checkpoints to --run (default runs/shapes, git-ignored) every few minutes
and continues from there when started again; --minutes is a wall-clock budget for this invocation.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minip2p
from minip2p import VAE, ModelConfig, TextConfig, UNet, UNetConfig, VAEConfig, save_checkpoint, shapes
from minip2p.checkpoint import BUNDLED_MMDIT, BUNDLED_MODEL
from minip2p.ddim import DDIM
from minip2p.evaluation import psnr
from minip2p.files import atomic_write
from minip2p.images import to_tensor
from minip2p.mmdit import MMDiT, MMDiTConfig, initialise
from minip2p.sd3 import SD3Config
from minip2p.sd3_loading import save_sd3
from minip2p.text import build_text_encoder, load_tokenizer, tokenize

ROOT = Path(__file__).resolve().parent.parent
KEPT_MMDIT = ROOT / "scripts" / "shapes-mmdit-run.safetensors"  # the unfinished MM-DiT run, committed
CONFIG = ModelConfig(
    "custom",
    UNetConfig(
        model_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2, 4),
        num_heads=4,
        context_dim=128,
        norm_groups=16,
    ),
    VAEConfig(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, norm_groups=8, scale_factor=1.0),
    TextConfig(hidden_size=128, intermediate_size=512, num_layers=3, num_heads=4),
    image_size=64,
)
# the shapes-world MM-DiT: SD3.5's blocks (q/k norms, no dual attention), 8x8 tokens of 2x2 latent cells,
# reading the bundled text encoder (frozen) at its penultimate layer, as SD3 reads its CLIPs
MMDIT = MMDiTConfig(
    depth=6,
    hidden_size=192,
    num_heads=3,
    patch_size=2,
    in_channels=4,
    context_dim=128,
    pooled_dim=128,
    pos_embed_max_size=8,
    qk_norm=True,
    dual_attention_layers=(),
)
MMDIT_TEXT = TextConfig(
    hidden_size=128,
    intermediate_size=512,
    num_layers=3,
    num_heads=4,
    penultimate=True,
    final_norm=False,
    projection_dim=128,
)


def log(run, msg):
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(run / "log.txt", "a") as f:
        f.write(line + "\n")


def save_state(path, model, opt, step, extra=None):
    with atomic_write(path) as tmp:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, **(extra or {})}, tmp)


def load_state(path):
    return torch.load(path, weights_only=True, map_location="cpu") if path.exists() else None


def learning_rate(base, warmup, step, t_end, anneal):
    """Linear warm-up over the first `warmup` steps; linear decay to 5% over the last `anneal` minutes."""
    left = (t_end - time.time()) / 60
    return base * min(1.0, (step + 1) / warmup) * (max(0.05, min(1.0, left / anneal)) if anneal else 1.0)


def train_vae(args, run):
    torch.manual_seed(args.seed)
    vae = VAE(CONFIG.vae)
    state = load_state(run / "vae.pt")
    if state:
        vae.load_state_dict(state["model"])
    if args.decoder_only:  # the encoder (so the UNet's latents) stays fixed; the decoder keeps improving
        vae.encoder.requires_grad_(False), vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in vae.parameters() if p.requires_grad], lr=args.lr or 1e-3, weight_decay=0.0
    )
    step = 0
    if state:
        step = state["step"]
        if state.get("decoder_only", False) == args.decoder_only:
            opt.load_state_dict(state["opt"])
    train, _ = shapes.scenes(min(20000, 10 * args.scenes), args.seed)
    held, _ = shapes.scenes(256, args.seed + 1)
    held = to_tensor(held)
    rng = np.random.default_rng(args.seed + step)
    t_end, t_save, first = time.time() + 60 * args.minutes, time.time() + 300, step
    while time.time() < t_end and not (args.steps and step - first >= args.steps):
        x = to_tensor(train[rng.integers(0, len(train), args.batch or 32)])
        mean, logvar = vae.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        rec = vae.decode(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            with torch.no_grad():
                p = psnr(vae.decode(vae.encode(held[:64])[0]).clamp(-1, 1), held[:64], peak=2.0)
            log(run, f"vae step {step} loss {loss.item():.5f} held-out PSNR {p:.2f} dB")
        if time.time() > t_save:
            save_state(run / "vae.pt", vae, opt, step, {"decoder_only": args.decoder_only})
            t_save = time.time() + 300
    save_state(run / "vae.pt", vae, opt, step, {"decoder_only": args.decoder_only})
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(held[i : i + 64])[0]) for i in range(0, 256, 64)])
        p = psnr(rec.clamp(-1, 1), held, peak=2.0)
    log(run, f"vae done at step {step}: held-out PSNR {p:.2f} dB on 256 scenes")


def encode_latents(args, run):
    if args.vae == "bundled":  # the shipped model's VAE: the MM-DiT shares it with the UNet
        vae = minip2p.load().vae
    else:
        vae = VAE(CONFIG.vae).eval()
        vae.load_state_dict(load_state(run / "vae.pt")["model"])
    imgs, specs = shapes.scenes(args.scenes, args.seed + 2)
    lat = []
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            x = to_tensor(imgs[i : i + 256])
            lat.append(torch.cat([vae.encode(x)[0], vae.encode(x.flip(-1))[0]]))  # mirrored scenes too
    lat = torch.cat(lat)
    idx = torch.cat([torch.arange(i, min(i + 256, len(imgs))).repeat(2) for i in range(0, len(imgs), 256)])
    scale = 1.0 / lat.std().item()
    with atomic_write(run / "latents.safetensors") as tmp:
        metadata = {"specs": json.dumps(specs), "scale": str(scale)}
        save_file({"latents": lat.contiguous(), "scene": idx}, str(tmp), metadata=metadata)
    log(
        run,
        f"encoded {len(lat)} latents of {len(imgs)} scenes; latent std {1 / scale:.4f} -> scale {scale:.4f}",
    )


def load_latents(run, scale=None):
    """-> (latents x scale (the latents' own 1/std unless given), their scene index, the scenes' specs)."""
    data = load_file(str(run / "latents.safetensors"))
    with safe_open(str(run / "latents.safetensors"), "pt") as f:
        meta = f.metadata()
    scale = float(meta["scale"]) if scale is None else scale
    return data["latents"] * scale, data["scene"], json.loads(meta["specs"])


def train_unet(args, run):
    torch.manual_seed(args.seed)
    lat, scene, specs = load_latents(run)
    unet, text = UNet(CONFIG.unet), build_text_encoder(CONFIG.text)
    ema_unet, ema_text = (
        UNet(CONFIG.unet).requires_grad_(False),
        build_text_encoder(CONFIG.text).requires_grad_(False),
    )
    tok = load_tokenizer(CONFIG.text)
    empty = tokenize(tok, [""])
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr or 1e-3, weight_decay=0.01)
    state, step = load_state(run / "unet.pt"), 0
    if state:
        unet.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        text.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"]), ema_text.load_state_dict(state["ema_text"])
        step = state["step"]
    else:
        ema_unet.load_state_dict(unet.state_dict()), ema_text.load_state_dict(text.state_dict())
    ac = DDIM(50).alphas_cumprod
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
    rng = np.random.default_rng(args.seed + step)
    t_end, t_save, first = time.time() + 60 * args.minutes, time.time() + 300, step
    losses = []
    while time.time() < t_end and not (args.steps and step - first >= args.steps):
        i = torch.from_numpy(rng.integers(0, len(lat), args.batch or 64))
        x0 = lat[i]
        prompts = [shapes.training_prompt(specs[int(s)], rng, 0.15, 0.1) for s in scene[i]]
        ids = tokenize(tok, prompts)
        t = torch.from_numpy(rng.integers(0, 1000, len(i)))
        noise = torch.randn_like(x0)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = text(ids).last_hidden_state
        if (
            args.pad_drop
        ):  # the end token and the padding after it carry the whole prompt (causal text model):
            # often swap them for the empty prompt's, so that the UNet learns to read each word where it is
            drop = torch.from_numpy(rng.random(len(i)) < args.pad_drop)
            after = torch.arange(ids.shape[1])[None] >= (ids == tok.eos_token_id).int().argmax(1)[:, None]
            context = torch.where((drop[:, None] & after)[..., None], text(empty).last_hidden_state, context)
        pred = unet(xt, t, context)
        loss = (weight[t] * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args.lr or 1e-3, 200, step, t_end, args.anneal)
        opt.step()
        step += 1
        decay = min(args.ema or 0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, m in ((ema_unet, unet), (ema_text, text)):
                for pe, pm in zip(e.parameters(), m.parameters()):
                    pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            log(run, f"unet step {step} loss {np.mean(losses):.4f}")
            losses = []
        if time.time() > t_save:
            save_state(
                run / "unet.pt",
                unet,
                opt,
                step,
                {
                    "text": text.state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "ema_text": ema_text.state_dict(),
                },
            )
            t_save = time.time() + 300
    save_state(
        run / "unet.pt",
        unet,
        opt,
        step,
        {"text": text.state_dict(), "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict()},
    )
    log(run, f"unet stopped at step {step}")


def new_mmdit() -> MMDiT:
    return initialise(MMDiT(MMDIT))


def mmdit_text():
    """The bundled model's text encoder (frozen) with a new pooled projection (trained): SD3 conditions
    every block on a projected end token."""
    text = build_text_encoder(MMDIT_TEXT)
    text.text_model.load_state_dict(minip2p.load().text_encoder.state_dict())
    text.requires_grad_(False).text_projection.requires_grad_(True)
    return text


def encode_batch(text, tok, prompts, rng, pad_drop):
    """Prompts -> (context (B, 77, 128), pooled (B, 128)); with pad_drop, the end and padding tokens of
    that share of the prompts are the empty prompt's (as for the UNet: each word read where it stands)."""
    ids = tokenize(tok, prompts + [""]).to(text.device)
    with torch.no_grad():
        out = text.text_model(ids, output_hidden_states=True)
    context, empty = out.hidden_states[-2][:-1], out.hidden_states[-2][-1:]
    drop = torch.from_numpy(rng.random(len(prompts)) < pad_drop).to(ids.device)
    after = torch.arange(ids.shape[1], device=ids.device)[None]
    after = after >= (ids[:-1] == tok.eos_token_id).int().argmax(1)[:, None]
    context = torch.where((drop[:, None] & after)[..., None], empty, context)
    return context, text.text_projection(out.pooler_output[:-1])


def restore_mmdit(run, start, model, ema, opt, text, ema_proj) -> tuple:
    """The run's state (else a kept one, else EMA = the new model) into the models -> (step, the step AdamW's
    warm-up counts from: a kept run's AdamW starts afresh, so it warms up again)."""
    state = load_state(run / "mmdit.pt")
    if state is None and start:
        state = kept_state(start)
    if state is None:
        ema.load_state_dict(model.state_dict())
        return 0, 0
    model.load_state_dict(state["model"]), ema.load_state_dict(state["ema"])
    ema_proj.copy_(state["ema_proj"]), text.text_projection.weight.data.copy_(state["proj"])
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    return state["step"], state.get("warm_from", 0 if "opt" in state else state["step"])


def train_mmdit(args, run):
    """Flow matching: x_sigma = (1 - sigma) x0 + sigma noise, the velocity noise - x0 the target; sigma
    logit-normal (SD3's)."""
    torch.manual_seed(args.seed)
    lat, scene, specs = load_latents(run, minip2p.load().config.vae.scale_factor)  # the pipeline's scale
    dev = torch.device(args.device)  # batches are drawn on the CPU: a seeded run sees the same data anywhere
    model, text, ema = (m.to(dev) for m in (new_mmdit(), mmdit_text(), new_mmdit().requires_grad_(False)))
    tok = load_tokenizer(MMDIT_TEXT)
    params = list(model.parameters()) + [text.text_projection.weight]
    opt = torch.optim.AdamW(params, lr=args.lr or 6e-4, weight_decay=0.0)
    ema_proj = text.text_projection.weight.detach().clone()
    step, warm_from = restore_mmdit(run, args.start, model, ema, opt, text, ema_proj)
    rng = np.random.default_rng(args.seed + step)
    t_end, t_save, first, losses = time.time() + 60 * args.minutes, time.time() + 300, step, []
    while time.time() < t_end and not (args.steps and step - first >= args.steps):
        i = torch.from_numpy(rng.integers(0, len(lat), args.batch or 32))
        x0, noise = lat[i].to(dev), torch.randn(len(i), *lat.shape[1:]).to(dev)
        prompts = [shapes.training_prompt(specs[int(s)], rng, 0.15, 0.1) for s in scene[i]]
        context, pooled = encode_batch(text, tok, prompts, rng, args.pad_drop)
        sigma = torch.sigmoid(torch.from_numpy(rng.standard_normal(len(i))).float()).to(dev)
        s = sigma.view(-1, 1, 1, 1)
        with torch.autocast(dev.type, torch.bfloat16, enabled=args.bf16):
            pred = model((1 - s) * x0 + s * noise, sigma * 1000, context, None, pooled)
        loss = (pred.float() - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args.lr or 6e-4, 500, step - warm_from, t_end, args.anneal)
        opt.step()
        step += 1
        decay = min(args.ema or 0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
            ema_proj.lerp_(text.text_projection.weight, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            log(run, f"mmdit step {step} loss {np.mean(losses):.4f}")
            losses = []
        if time.time() > t_save or time.time() >= t_end:
            save_mmdit(run, model, ema, opt, text, ema_proj, step, warm_from)
            t_save = time.time() + 300
    save_mmdit(run, model, ema, opt, text, ema_proj, step, warm_from)
    log(run, f"mmdit stopped at step {step}")


def save_mmdit(run, model, ema, opt, text, ema_proj, step, warm_from):
    extra = dict(
        ema=ema.state_dict(), ema_proj=ema_proj, proj=text.text_projection.weight, warm_from=warm_from
    )
    save_state(run / "mmdit.pt", model, opt, step, extra)


def keep_mmdit(args, run):
    """The run's weights and EMA weights in fp16, without AdamW's moments: small enough to commit, so that a
    fresh checkout resumes the run (`mmdit --start FILE`) where a session's git-ignored run folder is lost."""
    state = load_state(run / "mmdit.pt")
    tensors = {f"model.{k}": v for k, v in state["model"].items()}
    tensors.update({f"ema.{k}": v for k, v in state["ema"].items()})
    tensors.update(proj=state["proj"], ema_proj=state["ema_proj"])
    out = Path(args.to or KEPT_MMDIT)
    with atomic_write(out) as tmp:
        save_file(
            {k: v.half().contiguous() for k, v in tensors.items()}, str(tmp), {"step": str(state["step"])}
        )
    log(run, f"kept step {state['step']} in {out} ({out.stat().st_size / 1e6:.1f} MB)")


def kept_state(path) -> dict:
    """A file of `keep_mmdit` -> a state as `train_mmdit` saves it, less the optimiser's."""
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
    state = {"step": step, "proj": tensors.pop("proj"), "ema_proj": tensors.pop("ema_proj")}
    for part in ("model", "ema"):
        state[part] = {k[len(part) + 1 :]: v for k, v in tensors.items() if k.startswith(part + ".")}
    return state


def export_mmdit(args, run):
    """The EMA MM-DiT and pooled projection, the bundled VAE and text encoder -> one SD3-family file."""
    bundled, state = minip2p.load(), load_state(run / "mmdit.pt")
    model, text = MMDiT(MMDIT), mmdit_text()
    model.load_state_dict(state["ema"])
    text.text_projection.weight.data.copy_(state["ema_proj"])
    cfg = SD3Config("sd3.5", MMDIT, bundled.config.vae, MMDIT_TEXT, None, None, 0, 64, args.shift or 1.0)
    out = Path(args.to or BUNDLED_MMDIT)
    save_sd3(out, cfg, model, bundled.vae, text, dtype=torch.float16)
    log(run, f"exported step {state['step']} to {out} ({out.stat().st_size / 1e6:.1f} MB)")


def export(args, run):
    if args.arch == "mmdit":
        return export_mmdit(args, run)
    with safe_open(str(run / "latents.safetensors"), "pt") as f:
        scale = float(f.metadata()["scale"])
    cfg = ModelConfig(**{**CONFIG.__dict__})
    cfg.vae = VAEConfig(**{**CONFIG.vae.__dict__, "scale_factor": round(scale, 5)})
    vae, unet, text = VAE(cfg.vae), UNet(cfg.unet), build_text_encoder(cfg.text)
    vae.load_state_dict(load_state(run / "vae.pt")["model"])
    state = load_state(run / "unet.pt")
    unet.load_state_dict(state["ema_unet"]), text.load_state_dict(state["ema_text"])
    out = Path(args.to or BUNDLED_MODEL)
    save_checkpoint(out, cfg, unet, vae, text, dtype=torch.float16)
    log(
        run,
        f"exported step {state['step']} to {out} ({out.stat().st_size / 1e6:.1f} MB), "
        f"scale {cfg.vae.scale_factor}",
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["vae", "latents", "unet", "mmdit", "export", "keep"])
    p.add_argument(
        "--run", help="checkpoint folder, resumed if present (default: runs/shapes, runs/shapes-mmdit)"
    )
    p.add_argument("--minutes", type=float, default=30, help="wall-clock budget of this invocation")
    p.add_argument(
        "--steps", type=int, default=0, help="vae/unet: stop after this many steps (0: --minutes only)"
    )
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ema", type=float, help="EMA decay (unet: 0.995, mmdit: 0.999)")
    p.add_argument(
        "--pad-drop",
        type=float,
        default=0.5,
        help="unet: how often the end and padding tokens are replaced by the empty prompt's",
    )
    p.add_argument(
        "--anneal",
        type=float,
        default=0,
        help="unet/mmdit: decay lr linearly to 5%% over the last N minutes (wall clock: such runs are "
        "not repeatable bit for bit)",
    )
    p.add_argument(
        "--scenes",
        type=int,
        default=40000,
        help="scenes to encode for the UNet phase (the VAE trains on 10x, at most 20,000)",
    )
    p.add_argument(
        "--decoder-only", action="store_true", help="vae: train only the decoder (latents stay valid)"
    )
    p.add_argument(
        "--vae", choices=["own", "bundled"], default="own", help="latents: this run's VAE or the shipped one"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="mmdit: bf16 autocast (weights and loss stay fp32)")
    p.add_argument("--device", default="cpu", help="mmdit: where the model trains (cpu, cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--to", help="export/keep target (default: the bundled model of --arch; keep: KEPT_MMDIT)")
    p.add_argument("--start", help="mmdit: a kept run (keep's file) to start from when --run has no state")
    p.add_argument("--arch", choices=["unet", "mmdit"], default="unet", help="export: which model")
    p.add_argument("--shift", type=float, help="export, mmdit: the flow schedule's shift (default 1)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    mmdit = args.phase in ("mmdit", "keep") or args.arch == "mmdit"
    run = Path(args.run or ROOT / "runs" / ("shapes-mmdit" if mmdit else "shapes"))
    run.mkdir(parents=True, exist_ok=True)
    phases = {"vae": train_vae, "latents": encode_latents, "unet": train_unet, "mmdit": train_mmdit}
    phases["keep"] = keep_mmdit
    {**phases, "export": export}[args.phase](args, run)


if __name__ == "__main__":
    main()
