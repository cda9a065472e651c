"""Print the max abs differences between minip2p and diffusers (the figures behind tests/test_parity.py).

    python benchmarks/parity.py [--full]     # --full adds the full-size SD1 UNet at a 32x32 latent (~4 GB file)
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import diffusers_text_encoder, diffusers_unet, diffusers_vae, small_config, write_checkpoint  # noqa: E402

import minip2p  # noqa: E402
from minip2p.text import encode_text, tokenize  # noqa: E402


def report(family, cfg, path, sd, size=16, full=False):
    pipe = minip2p.load(path)
    g = torch.Generator().manual_seed(7)
    x, ctx = torch.randn(2 - full, 4, size, size, generator=g), torch.randn(2 - full, 77, cfg.unet.context_dim, generator=g)
    with torch.no_grad():
        ours = pipe.unet(x, torch.tensor([981, 21][: 2 - full]), ctx)
        if full:
            del pipe
        ref = diffusers_unet(sd, cfg)
        print(f"{family:9s} UNet      {(ours - ref(x, torch.tensor([981, 21][: 2 - full]), ctx).sample).abs().max():.2e}")
        if full:
            return
        vae = diffusers_vae(sd, cfg)
        img = torch.rand(1, 3, 64, 48, generator=g) * 2 - 1
        mean, logvar = pipe.vae.encode(img)
        dist = vae.encode(img).latent_dist
        print(f"{family:9s} VAE enc   mean {(mean - dist.mean).abs().max():.2e}  logvar {(logvar - dist.logvar).abs().max():.2e}")
        print(f"{family:9s} VAE dec   {(pipe.vae.decode(x) - vae.decode(x).sample).abs().max():.2e}")
        ids = tokenize(pipe.tokenizer, ["a photo of a cat", "a red circle and a blue square"])
        text = diffusers_text_encoder(sd, cfg)
        print(f"{family:9s} text      {(encode_text(pipe.text_encoder, ids, cfg.text.penultimate) - text(ids).last_hidden_state).abs().max():.2e}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for family in ("sd1", "sd2"):
            cfg = small_config(family)
            sd = write_checkpoint(Path(d) / f"{family}.safetensors", cfg, seed=1)
            report(f"small-{family}", cfg, Path(d) / f"{family}.safetensors", sd)
        if args.full:
            cfg = minip2p.ModelConfig.sd1()
            sd = write_checkpoint(Path(d) / "full.safetensors", cfg, seed=5, with_config=False)
            report("full-sd1", cfg, Path(d) / "full.safetensors", sd, size=32, full=True)


if __name__ == "__main__":
    main()
