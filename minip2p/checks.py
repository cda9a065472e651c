"""Checks of what a user passes in, each failing with one line that names the value and says what to give.

Every number that reaches the sampler, a controller or a file goes through one of these first: a NaN guidance
scale would otherwise come out as a black picture, a huge size as an out-of-memory crash after a long wait.
"""

import math
import numbers

import torch

# torch's CPU generator (mt19937) keeps the low 32 bits of a seed: larger seeds would give the same noise
SEED_LIMIT = 2**32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # by name


def short(text: str, limit: int = 80) -> str:
    """A user's text, cut for an error message (a 50,000-character prompt is not echoed whole)."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def check_finite(value, name: str) -> float:
    """A real number that is not NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def check_range(value, name: str, low: float, high: float, low_open: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with low_open)."""
    value = check_finite(value, name)
    if not (low < value <= high if low_open else low <= value <= high):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], not {value:g}")
    return value


def check_whole(value, name: str, low: int = 1, high: int | None = None) -> int:
    """An integer in [low, high] (booleans and floats are refused: 2.5 steps is a mistake, not 2)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, not {value}")
    return int(value)


def check_seed(value) -> int:
    """A seed: 0 <= seed < 2**32, each giving its own noise."""
    return check_whole(value, "seed", 0, SEED_LIMIT - 1)


def check_size_pair(value, name: str) -> tuple:
    """A (height, width) or (top, left) pair of whole pixel counts >= 0 (SDXL's micro-conditioning)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of whole numbers (height, width), not {value!r}")
    return tuple(check_whole(v, f"{name} entry", 0, 1 << 16) for v in value)


def check_device(device) -> torch.device:
    """A device name -> torch.device, or a one-line error when this torch cannot use it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name: use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = (
            "without CUDA"
            if torch.version.cuda is None
            else f"with CUDA {torch.version.cuda} but sees no GPU"
        )
        raise ValueError(
            f"device {str(device)!r} is not available: this torch {torch.__version__} is built {build}; "
            "use cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {str(device)!r} is not available: this machine has {torch.cuda.device_count()} GPUs"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' is not available on this machine; use cpu")
    return device


def check_prompts(prompts) -> list:
    """A prompt or a list of prompts -> a non-empty list of strings."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"give a prompt, or a list of prompts (strings), not {short(prompts)}")
    return list(prompts)


def check_dtype(dtype) -> torch.dtype:
    """A torch floating-point dtype, or its name in DTYPES -> the dtype."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, not {dtype!r}")
    return dtype


def check_image_size(cfg, height, width, max_size: int | None = None) -> tuple:
    """Image sizes -> (height, width), checked for a model config: positive multiples of what the model needs,
    at most max_size (by default 4x the model's own size: past it memory grows fast; going there is a
    choice)."""
    cell = cfg.vae.pixels_per_cell
    step = cell * 2 ** (len(cfg.unet.channel_mult) - 1)
    limit = 4 * cfg.image_size if max_size is None else check_whole(max_size, "max_size")
    for name, v in (("height", height), ("width", width)):
        check_whole(v, name)
        if v % step:
            raise ValueError(
                f"{name}={v}: image sizes must be positive multiples of {step} for this model "
                f"({cell} pixels per latent cell x {step // cell}, the UNet's downsampling)"
            )
        if v > limit:
            raise ValueError(
                f"{name}={v} is more than {limit}, 4x this model's {cfg.image_size} px; pass "
                f"max_size={v} (--max-size {v}) to go past it"
            )
    return height, width
