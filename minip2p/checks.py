"""Checks of what a user passes in, each failing with one line that names the value and says what to give.

Every number that reaches the sampler, a controller or a file goes through one of these first: a NaN guidance
scale would otherwise come out as a black picture, a huge size as an out-of-memory crash after a long wait.
"""

import math
import numbers
import string

import torch

# torch's CPU generator (mt19937) keeps the low 32 bits of a seed: larger seeds would give the same noise
SEED_LIMIT = 2**32
DEVICES = "cpu, cuda, cuda:1 or mps"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # by name


def short(value, limit: int = 80) -> str:
    """A user's value as an error message shows it: its repr (control characters escaped), cut at `limit`
    (a 50,000-character prompt or a 4,000-digit seed is not echoed whole)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def cut(text: str, limit: int = 200) -> str:
    """A message (another library's error, say) cut at `limit` characters, on one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def short_path(path, limit: int = 200) -> str:
    """A path as an error message shows it: as is when printable, else its repr (no terminal escapes from a
    file name reach the terminal); cut at `limit`."""
    text = str(path)
    return text if text.isprintable() and len(text) <= limit else short(text, limit)


def check_finite(value, name: str) -> float:
    """A real number that is not NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {short(value)}")
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
        raise ValueError(f"{name} must be a whole number, not {short(value)}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, not {short(int(value))}")
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
        raise ValueError(f"device {short(device)} is not a device name: use {DEVICES}") from None
    if device.type not in (
        "cpu",
        "cuda",
        "mps",
    ):  # meta, xla, ...: torch has the name, minip2p cannot run there
        raise ValueError(f"device {str(device)!r}: minip2p runs on {DEVICES}")
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
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, not {short(dtype)}")
    return dtype


def dtype_name(dtype, what: str = "dtype") -> str | None:
    """A dtype as `load` takes it (a torch dtype or its name; None stays None) -> its name in DTYPES."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        names = [n for n, d in DTYPES.items() if d == dtype]
        if names:
            return names[0]
    elif isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    raise ValueError(f"{what} {short(dtype)}: use {', '.join(DTYPES)} (or the torch dtype)")


def check_image_size(cfg, height, width, max_size: int | None = None) -> tuple:
    """Image sizes -> (height, width), checked for a model config: positive multiples of what the model needs,
    at most max_size (by default 4x the model's own size: past it memory grows fast; going there is a
    choice)."""
    cell, step = cfg.vae.pixels_per_cell, cfg.size_step
    limit = 4 * cfg.image_size if max_size is None else check_whole(max_size, "max_size")
    for name, v in (("height", height), ("width", width)):
        check_whole(v, name)
        if v % step:
            raise ValueError(
                f"{name}={v}: image sizes must be positive multiples of {step} for this model "
                f"({cell} pixels per latent cell x {step // cell}, the {cfg.size_reason})"
            )
        if cfg.largest is not None and v > cfg.largest:
            raise ValueError(
                f"{name}={v} is more than {cfg.largest}, the largest image this model's position table covers"
            )
        if v > limit:
            raise ValueError(
                f"{name}={v} is more than {limit}, 4x this model's {cfg.image_size} px; pass "
                f"max_size={v} (--max-size {v}) to go past it"
            )
    return height, width


def clean(word: str) -> str:
    """A word as prompts are matched on: lower case, without surrounding punctuation ("Cat," is "cat")."""
    return word.lower().strip(string.punctuation)


def check_prompt_tokens(tokenizer, prompt: str, max_length: int = 77) -> list:
    """A prompt's token ids (start and end included), or an error past max_length: not a silent cut (and
    not transformers' warning first: verbose=False)."""
    ids = tokenizer(prompt, verbose=False).input_ids
    if len(ids) > max_length:
        raise ValueError(
            f"prompt has {len(ids)} tokens, more than the {max_length} the text encoder takes "
            f"(start and end included); shorten it: {short(prompt)}"
        )
    return ids


def check_words(prompt: str, words) -> None:
    """Every word (a string, or the index of a word in prompt.split()) is a word of `prompt`."""
    own = prompt.split()
    for word in [words] if isinstance(words, (str, int)) else words:
        if isinstance(word, bool) or not isinstance(word, (str, int)):
            raise ValueError(f"a word is a string or the index of a word in the prompt, not {short(word)}")
        if isinstance(word, int) and not 0 <= word < len(own):
            raise ValueError(f"word index {word} is outside {short(prompt)}, which has {len(own)} words")
        if isinstance(word, str) and clean(word) not in map(clean, own):
            raise ValueError(
                f"{short(word)} is not a word of {short(prompt)}; its words are {[clean(w) for w in own]}"
            )


def check_mask(mask) -> torch.Tensor | None:
    """A user's mask -> (h, w) float tensor with values in [0, 1] (a (1, h, w) or (1, 1, h, w) one is
    squeezed)."""
    if mask is None:
        return None
    m = torch.as_tensor(mask, dtype=torch.float32)
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2 or m.numel() == 0:
        raise ValueError(
            f"a LocalBlend mask is a 2-D (height, width) array, not one of shape {tuple(m.shape)}"
        )
    if not (torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1):
        raise ValueError("a LocalBlend mask holds values in [0, 1] (1: the edit may change this cell)")
    return m


def check_word_list(words, what: str) -> list:
    """A word or a list of words -> a list of words (strings)."""
    words = [words] if isinstance(words, str) else words
    if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{what} takes a word or a list of words, not {short(words)}")
    return list(words)


def check_blend_words(words, prompts, what: str = "LocalBlend") -> None:
    """Every blend word is a word of one prompt at least (a prompt without it blends on the others')."""
    for w in words:
        if not any(clean(w) in map(clean, p.split()) for p in prompts):
            raise ValueError(
                f"{what}: blend word {short(w)} is in none of the prompts ({', '.join(map(short, prompts))})"
            )
