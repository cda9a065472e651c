"""What a model is: the config of its parts (UNet, VAE, one or two text encoders), and the checks every config
passes before anything is built from it, since a config may come from a file, and a file may lie."""

import json
import math
from dataclasses import asdict, dataclass, field, fields

from .checks import check_whole
from .text import TextConfig
from .unet import UNetConfig
from .vae import VAEConfig

FAMILIES = ("sd1", "sd2", "sdxl", "custom")
SDXL_SIZES = 6  # SDXL's micro-conditioning numbers: original (h, w), crop (top, left), target (h, w)
SDXL_SIZE_DIM = 256  # each of them becomes a sinusoid this wide


class CheckpointError(ValueError):
    pass


@dataclass
class ModelConfig:
    family: str = "sd1"  # "sd1", "sd2", "sdxl" or "custom" (our own small models)
    unet: UNetConfig = field(default_factory=UNetConfig.sd1)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig.sd1)
    prediction: str = "epsilon"  # "epsilon" or "v" (not visible in the weights)
    image_size: int = 512  # default height and width of generated images
    text_2: TextConfig | None = None  # SDXL: the second text encoder (OpenCLIP bigG); None for the others
    zero_negative: bool = False  # no negative prompt: zero embeddings (SDXL), else the empty prompt's (SD)

    @classmethod
    def sd1(cls):
        return cls()

    @classmethod
    def sd2(cls, prediction="epsilon"):
        return cls(
            "sd2",
            UNetConfig.sd2(),
            VAEConfig(),
            TextConfig.sd2(),
            prediction,
            768 if prediction == "v" else 512,
        )

    @classmethod
    def sdxl(cls):
        """SDXL base 1.0: its VAE is SD's with another scale, and overflows in float16."""
        vae = VAEConfig(scale_factor=0.13025, upcast=True)
        return cls(
            "sdxl", UNetConfig.sdxl(), vae, TextConfig.sdxl(), "epsilon", 1024, TextConfig.sdxl_2(), True
        )

    size_reason = "UNet's downsampling"  # why image sizes are multiples of size_step
    largest = None  # no largest image size but memory's

    @property
    def size_step(self) -> int:
        """Image sizes are multiples of this: pixels per latent cell x the UNet's downsampling."""
        return self.vae.pixels_per_cell * 2 ** (len(self.unet.channel_mult) - 1)

    @property
    def encoders(self) -> list:
        """The text encoders' configs, in the order their hidden states are concatenated."""
        return [self.text] if self.text_2 is None else [self.text, self.text_2]

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str, where="the config") -> "ModelConfig":
        """A config written by to_json -> ModelConfig, checked (see check_config); one line for any fault."""
        try:
            d = json.loads(s)
            parts = {}
            for name, part in PARTS.items():
                given = d.pop(name)
                if given is None and name == "text_2":
                    parts[name] = None
                    continue
                given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
                unknown = set(given) - {f.name for f in fields(part)}
                if unknown:
                    raise ValueError(f"unknown {name} fields {sorted(unknown)}")
                parts[name] = part(**given)
            cfg = cls(**d, **parts)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{where} is not a minip2p model config ({type(e).__name__}: {e})"
            ) from None
        return check_config(cfg, where)


PARTS = {"unet": UNetConfig, "vae": VAEConfig, "text": TextConfig, "text_2": TextConfig}
# every size a config may give, (low, high): the largest real models (SDXL, OpenCLIP bigG) fit with room to
# spare, and nothing larger is built, so that a file's metadata cannot make us allocate what no model needs
TEXT_LIMITS = dict(
    hidden_size=(1, 16384),
    intermediate_size=(1, 65536),
    num_layers=(1, 128),
    num_heads=(1, 256),
    vocab_size=(1, 1_000_000),
    max_length=(2, 1024),
    projection_dim=(1, 16384),
)
LIMITS = {
    "unet": dict(
        in_channels=(1, 64),
        out_channels=(1, 64),
        model_channels=(1, 4096),
        num_res_blocks=(1, 16),
        num_heads=(1, 256),
        head_dim=(1, 1024),
        context_dim=(1, 16384),
        transformer_depth=(1, 64),
        norm_groups=(1, 1024),
        adm_in_channels=(1, 16384),
    ),
    "vae": dict(
        ch=(1, 2048), num_res_blocks=(1, 16), in_channels=(1, 16), z_channels=(1, 256), norm_groups=(1, 1024)
    ),
    "text": TEXT_LIMITS,
    "text_2": TEXT_LIMITS,
}
OPTIONAL = {("unet", "head_dim"), ("unet", "adm_in_channels"), ("text", "projection_dim")}
MULTIPLIERS = (1, 64)  # channel_mult / ch_mult entries
MAX_LEVELS = 8


def check_config(cfg: ModelConfig, where) -> ModelConfig:
    """Every number of a config in its range and consistent with the others, before anything is built."""

    def fail(what):
        raise CheckpointError(f"{where}: {what}")

    if not isinstance(cfg.text_2, (TextConfig, type(None))):
        fail(f"text_2 must be a text encoder's config or null, not {cfg.text_2!r}")
    if (cfg.text_2 is not None) != (cfg.family == "sdxl"):
        fail(f"family {cfg.family!r}: a second text encoder (text_2) is SDXL's, and SDXL has one")
    check_numbers(cfg, fail)
    check_widths(cfg, fail)
    check_text(cfg, fail)
    v = cfg.vae
    if not (
        isinstance(v.scale_factor, (int, float)) and math.isfinite(v.scale_factor) and v.scale_factor > 0
    ):
        fail(f"vae.scale_factor must be a positive finite number, not {v.scale_factor!r}")
    if not (isinstance(v.shift_factor, (int, float)) and math.isfinite(v.shift_factor)):
        fail(f"vae.shift_factor must be a finite number, not {v.shift_factor!r}")
    if (
        not isinstance(v.quant_conv, bool)
        or not isinstance(v.upcast, bool)
        or not isinstance(cfg.zero_negative, bool)
    ):
        fail(
            f"vae.quant_conv, vae.upcast and zero_negative must be true or false, not {v.quant_conv!r}, "
            f"{v.upcast!r}, {cfg.zero_negative!r}"
        )
    if cfg.family not in FAMILIES or cfg.prediction not in ("epsilon", "v"):
        fail(
            f"family {cfg.family!r}, prediction {cfg.prediction!r}: expected one of {FAMILIES}; epsilon or v"
        )
    step = v.pixels_per_cell * 2 ** (len(cfg.unet.channel_mult) - 1)
    if not isinstance(cfg.image_size, int) or not step <= cfg.image_size <= 8192 or cfg.image_size % step:
        fail(f"image_size must be a multiple of {step} up to 8192, not {cfg.image_size!r}")
    return cfg


def check_numbers(cfg: ModelConfig, fail):
    """Every size in its LIMITS, every level multiplier in MULTIPLIERS."""

    def check(value, name, low, high):
        try:
            check_whole(value, name, low, high)
        except ValueError as e:
            fail(e)

    for part, limits in LIMITS.items():
        sub = getattr(cfg, part)
        if sub is None:
            continue
        for name, (low, high) in limits.items():
            value = getattr(sub, name)
            if (part.removesuffix("_2"), name) in OPTIONAL and value is None:
                continue  # head_dim: num_heads heads
            if part == "unet" and name == "transformer_depth" and isinstance(value, tuple):
                if not isinstance(sub.channel_mult, tuple) or len(value) != len(sub.channel_mult):
                    fail(f"unet.transformer_depth {value} must give one depth per level of channel_mult")
                for depth in value:
                    check(depth, "unet.transformer_depth entry", low, high)
                continue
            check(value, f"{part}.{name}", low, high)
    for part, name in (("unet", "channel_mult"), ("vae", "ch_mult")):
        mult = getattr(getattr(cfg, part), name)
        if not isinstance(mult, tuple) or not 1 <= len(mult) <= MAX_LEVELS:
            fail(f"{part}.{name} must be a list of 1 to {MAX_LEVELS} widths, not {mult!r}")
        for m in mult:
            check(m, f"{part}.{name} entry", *MULTIPLIERS)


def check_widths(cfg: ModelConfig, fail):
    """The UNet's and VAE's levels against each other: attention levels that exist, widths that the norm
    groups and the heads divide."""
    u, v = cfg.unet, cfg.vae
    levels = [2**i for i in range(len(u.channel_mult))]
    if not all(r in levels for r in u.attention_resolutions):
        fail(f"unet.attention_resolutions {u.attention_resolutions} must be among the levels' {levels}")
    widths = [u.model_channels * m for m in u.channel_mult] + [v.ch * m for m in v.ch_mult]
    groups = [u.norm_groups] * (len(u.channel_mult)) + [v.norm_groups] * len(v.ch_mult)
    if any(w % g for w, g in zip(widths, groups)):
        fail(f"every width {widths} must be a multiple of its norm_groups ({u.norm_groups}, {v.norm_groups})")
    heads = [u.heads(u.model_channels * m) for m in u.channel_mult]
    if u.head_dim is not None and any(u.model_channels * m % u.head_dim for m in u.channel_mult):
        fail(f"unet.head_dim {u.head_dim} must divide every width {widths[: len(u.channel_mult)]}")
    if any(u.model_channels * m % h for m, h in zip(u.channel_mult, heads)):
        fail(f"unet.num_heads {u.num_heads} must divide every width {widths[: len(u.channel_mult)]}")


def check_text(cfg: ModelConfig, fail):
    """The text encoders against each other and the UNet: their widths add up to the context the UNet reads;
    a second encoder gives the pooled embedding that, with the sizes, is SDXL's added conditioning y."""
    u, encoders = cfg.unet, cfg.encoders
    for t in encoders:
        if t.hidden_size % t.num_heads:
            fail(f"text.hidden_size {t.hidden_size} must be a multiple of text.num_heads {t.num_heads}")
        if t.hidden_act not in ("quick_gelu", "gelu") or not isinstance(t.pad_token, str):
            fail(f"text.hidden_act must be quick_gelu or gelu (and pad_token a string), not {t.hidden_act!r}")
        if not all(isinstance(b, bool) for b in (t.penultimate, t.final_norm)):
            fail("text.penultimate and text.final_norm must be true or false")
    width = sum(t.hidden_size for t in encoders)
    if width != u.context_dim:
        fail(f"the text encoders' widths add up to {width}, but unet.context_dim is {u.context_dim}")
    if len({t.max_length for t in encoders}) > 1:
        fail("both text encoders must take the same number of tokens (max_length)")
    if cfg.text.projection_dim is not None:
        fail("text.projection_dim: only the second text encoder (text_2) gives a pooled embedding")
    if cfg.text_2 is not None:
        pooled = cfg.text_2.projection_dim
        if pooled is None or u.adm_in_channels != pooled + SDXL_SIZES * SDXL_SIZE_DIM:
            fail(
                f"a second text encoder needs text_2.projection_dim (its pooled width, {pooled}) + "
                f"{SDXL_SIZES} x {SDXL_SIZE_DIM} = unet.adm_in_channels ({u.adm_in_channels})"
            )
    elif u.adm_in_channels is not None:
        fail("unet.adm_in_channels (SDXL's added conditioning) needs a second text encoder (text_2)")
