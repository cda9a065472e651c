"""The one attention function: explicit softmax path == fused path; the controller hook sees every place."""

import torch

from minip2p import Controller, UNet, UNetConfig, attention


class Recorder(Controller):
    def __init__(self):
        self.calls = []

    def __call__(self, attn, place):
        self.calls.append((place, tuple(attn.shape), attn.dtype))
        return attn


def test_explicit_path_equals_fused_path():
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 64, 40, generator=g),
        torch.randn(2, 77, 40, generator=g),
        torch.randn(2, 77, 40, generator=g),
    )
    fused = attention(q, k, v, heads=5)
    explicit = attention(q, k, v, heads=5, controller=Controller())
    manual = torch.stack(
        [
            torch.softmax(q[:, :, h * 8 : (h + 1) * 8] @ k[:, :, h * 8 : (h + 1) * 8].mT / 8**0.5, -1)
            @ v[:, :, h * 8 : (h + 1) * 8]
            for h in range(5)
        ],
        2,
    ).reshape(2, 64, 40)
    assert (fused - explicit).abs().max() < 1e-5 and (manual - explicit).abs().max() < 1e-5


def test_a_controller_can_replace_the_map():
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8)

    class Uniform(Controller):
        def __call__(self, attn, place):
            return torch.full_like(attn, 1 / attn.shape[-1])

    out = attention(q, k, v, heads=2, controller=Uniform())
    assert torch.allclose(out, v.mean(1, keepdim=True).expand(1, 4, 8), atol=1e-6)


def test_unet_places_and_the_hook():
    cfg = UNetConfig(model_channels=32, num_heads=4, context_dim=16)
    torch.manual_seed(0)
    unet = UNet(cfg).eval()
    places = unet.places()
    assert len(places) == 2 * 16  # SD1 layout: 6 down, 1 mid, 9 up transformers; attn1 + attn2 each
    assert [p.where for p in places].count("mid") == 2
    assert places[0].key == "input_blocks.1.1.transformer_blocks.0.attn1" and not places[0].is_cross
    assert places[1].key == "input_blocks.1.1.transformer_blocks.0.attn2" and places[1].is_cross
    assert {p.downsample for p in places} == {1, 2, 4, 8} and places[0].heads == 4
    rec = Recorder()
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 16)
    with torch.no_grad():
        plain, hooked = unet(x, 10, ctx), unet(x, 10, ctx, rec)
    assert (plain - hooked).abs().max() < 1e-4
    assert [c[0] for c in rec.calls] == places
    first_cross = rec.calls[1]
    assert first_cross[1] == (2 * 4, 16 * 16, 77) and first_cross[2] == torch.float32
    assert rec.calls[0][1] == (8, 256, 256)


def test_a_controller_only_pays_for_the_places_it_wants():
    class CrossOnly(Recorder):
        def wants(self, place):
            return place.is_cross

    unet, rec = UNet(UNetConfig(model_channels=32, num_heads=4, context_dim=16)).eval(), CrossOnly()
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), 1, torch.randn(1, 77, 16), rec)
    assert len(rec.calls) == 16 and all(c[0].is_cross for c in rec.calls)


def test_half_precision_keeps_the_softmax_in_fp32():
    rec = Recorder()
    q = torch.randn(1, 4, 8, dtype=torch.bfloat16)
    out = attention(q, q, q, heads=2, controller=rec)
    assert out.dtype == torch.bfloat16 and rec.calls[0][2] == torch.float32
