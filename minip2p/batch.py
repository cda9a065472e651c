"""Several target prompts edited against one source in one sampling pass, each with its own edit.

The batch is [source, target 1, ..., target K]. Edit k sees the rows [source, target k] exactly as it would
alone (rows of a batch never mix: attention, guidance and the sampler are per row), so K edits cost 1 + K rows
of work instead of 2K. A sweep groups its edits of one source and seed into such batches.
"""

from .attention import Controller, conditional_half
from .p2p import Edit, make_edit
from .store import AttentionStore

LIST_VALUED = ("blend", "cross_places", "self_places")  # options whose one value is already a list


def per_target(name: str, value, targets: int) -> list:
    """An option of a K-target edit -> its value for each target. A list gives one value per target (for
    blend and the places, whose own value is a list: a list of lists or None); anything else is shared."""
    if isinstance(value, list) and (
        name not in LIST_VALUED or all(v is None or isinstance(v, (list, tuple)) for v in value)
    ):
        if len(value) != targets:
            raise ValueError(
                f"{name}: a list gives one value per target prompt: {targets} targets, {len(value)} values"
            )
        return value
    return [value] * targets


class EditBatch(Controller):
    """K edits of one source as one controller: prompts [source, target 1, ..., target K]."""

    def __init__(self, edits: list, store: AttentionStore | None = None):
        self.edits, self.store = edits, store
        self.prompts = [edits[0].prompts[0]] + [e.prompts[1] for e in edits]

    def start(self, steps, latent_hw, device=None):
        for edit in self.edits:
            edit.start(steps, latent_hw, device)
        if self.store is not None:
            self.store.start(steps, latent_hw, device)

    def before_step(self, i):
        for edit in self.edits:
            edit.before_step(i)

    def wants(self, place):
        return any(e.wants(place) for e in self.edits) or (self.store is not None and self.store.wants(place))

    def __call__(self, attn, place):
        cond = conditional_half(attn, place.heads)
        for k, edit in enumerate(self.edits, start=1):
            if edit.wants(place):
                pair = cond[[0, k]]  # a copy: the edit sees its two rows as a batch of its own
                edit.edit_maps(pair, place)
                cond[k] = pair[1]
        if self.store is not None:
            self.store(attn, place)
        return attn

    def after_step(self, i, latents):
        for k, edit in enumerate(self.edits, start=1):
            latents[k] = edit.after_step(i, latents[[0, k]])[1]  # LocalBlend, on its own two rows
        if self.store is not None:
            self.store.after_step(i, latents)
        return latents


def make_edits(source: str, targets: list, tokenizer, *, store=None, **options) -> EditBatch:
    """The edits of `source` into each of `targets` (`make_edit`'s options, each shared or one per target
    as `per_target` reads them), checked before any sampling."""
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"targets must be a non-empty list of prompts, not {targets!r}")
    columns = {k: per_target(k, v, len(targets)) for k, v in options.items()}
    edits: list[Edit] = [
        make_edit(source, target, tokenizer, **{k: v[n] for k, v in columns.items()})
        for n, target in enumerate(targets)
    ]
    return EditBatch(edits, store)
