"""Several targets in one batch, and the source recorded once: both are the same edits as the plain ones.

Tolerance: images within 1e-3 of the edits run one by one / without a recording (rows of a batch never mix;
what may differ is the last bits of a matrix product of another batch size, and the recorded source's maps
computed in a batch of one)."""

import pytest
import torch

import minip2p
from minip2p import defaults
from minip2p.recording import Recording

SOURCE = "a red circle on a white background"
TARGETS = ["a blue circle on a white background", "a red square on a white background", "a red circle"]
PER_TARGET = dict(
    kind=["replace", "replace", "refine"],
    cross_replace_steps=[0.8, (0.2, 0.6), 0.5],
    blend=[["circle"], None, None],
    reweight=[None, {"square": 2.0}, None],
)
TOL = 1e-3


def one(options: dict, n: int) -> dict:
    return {
        k: (v[n] if isinstance(v, list) else v)
        for k, v in options.items()
        if not (isinstance(v, list) and v[n] is None)
    }


def images(pipe, source, target, **kw):
    return pipe.edit(source, target, seed=3, steps=6, output="tensor", progress=False, **kw)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_a_batch_of_targets_equals_the_edits_one_by_one(shapes_pipe, sampler):
    batch = images(shapes_pipe, SOURCE, TARGETS, sampler=sampler, **PER_TARGET)
    assert batch.shape[0] == 1 + len(TARGETS)
    for n, target in enumerate(TARGETS):
        alone = images(shapes_pipe, SOURCE, target, sampler=sampler, **one(PER_TARGET, n))
        assert (batch[0] - alone[0]).abs().max() < TOL and (batch[n + 1] - alone[1]).abs().max() < TOL
    assert all((batch[n] - batch[0]).abs().max() > 1e-2 for n in range(1, len(batch)))  # real edits


def test_per_target_options_are_checked_before_sampling(pipe):
    with pytest.raises(ValueError, match="one value per target prompt: 2 targets, 3 values"):
        pipe.edit(SOURCE, TARGETS[:2], kind=["replace"] * 3, seed=0, progress=False)
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        pipe.edit(SOURCE, [], seed=0, progress=False)
    with pytest.raises(ValueError, match="'hexagon'"):
        pipe.edit(SOURCE, TARGETS[:2], blend=[["circle"], ["hexagon"]], seed=0, progress=False)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_an_edit_from_a_recording_equals_the_edit(pipe, sampler):
    recording = pipe.record(SOURCE, seed=3, steps=6, sampler=sampler, progress=False)
    for target, options in [
        (TARGETS[0], dict(blend=["circle"])),
        (TARGETS[2], dict(kind="refine")),
        (TARGETS[1], dict(reweight={"square": 2.0}, self_replace_steps=0.6)),
    ]:
        ref = images(pipe, SOURCE, target, sampler=sampler, **options)
        out = pipe.edit(recording, target, output="tensor", progress=False, **options)
        assert (out - ref).abs().max() < TOL and (out[1] - out[0]).abs().max() > 1e-2
    batch = pipe.edit(recording, TARGETS, output="tensor", progress=False, **PER_TARGET)
    assert (batch - images(pipe, SOURCE, TARGETS, sampler=sampler, **PER_TARGET)).abs().max() < TOL


def test_a_recording_saves_loads_and_replays(pipe, tmp_path):
    recording = pipe.record(SOURCE, seed=1, steps=4, progress=False)
    recording.save(tmp_path / "r.safetensors")
    loaded = Recording.load(tmp_path / "r.safetensors")
    assert loaded.settings == {**recording.settings, "crops_coords_top_left": [0, 0]}
    a = pipe.edit(recording, TARGETS[0], output="tensor", progress=False)
    assert torch.equal(a, pipe.edit(loaded, TARGETS[0], output="tensor", progress=False))
    assert recording.nbytes == sum(t.numel() * 4 for t in [recording.latents, *recording.maps.values()])


def test_a_recording_of_an_inversion_replays_it(pipe):
    image = pipe.generate([SOURCE], seed=1, steps=4, output="tensor", progress=False)
    for method in ("direct", "negative-prompt"):
        inv = pipe.invert(image, SOURCE, method=method, steps=5, progress=False)
        ref = pipe.edit(SOURCE, TARGETS[0], inversion=inv, output="tensor", progress=False)
        out = pipe.edit(
            pipe.record(inversion=inv, progress=False), TARGETS[0], output="tensor", progress=False
        )
        assert (out - ref).abs().max() < TOL


def test_a_recording_refuses_what_it_cannot_replay(pipe, small_ckpt, tmp_path):
    recording = pipe.record(SOURCE, seed=1, steps=3, progress=False)
    other = minip2p.load(small_ckpt["sd2"][0])
    cases = [
        (lambda: other.edit(recording, TARGETS[0]), "made with another model"),
        (
            lambda: pipe.edit("a green circle on a white background", TARGETS[0], recording=recording),
            "this recording is of",
        ),
        (lambda: pipe.edit(recording, TARGETS[0], steps=5), "steps=5: the recording was made with 3"),
        (lambda: pipe.edit(recording, TARGETS[0], seed=2), "seed: a recording holds its start noise"),
        (lambda: pipe.edit(recording, TARGETS[0], self_max_fraction=1.0), "kept self-attention up to 0.25"),
        (lambda: pipe.record(SOURCE, seed=1, steps=3, eta=0.5), "eta: a recording replays"),
        (
            lambda: pipe.generate([TARGETS[0]], recording=recording, steps=4),
            "steps=4: the recording was made",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    path = tmp_path / "r.safetensors"
    recording.maps[next(iter(recording.maps))][0, 0, 0, 0] = float("nan")
    recording.save(path)
    with pytest.raises(ValueError, match="NaN or infinite"):
        Recording.load(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable recording file"):
        Recording.load(path)
    pipe.invert(
        pipe.generate([SOURCE], seed=1, steps=2, output="tensor", progress=False),
        SOURCE,
        method="ddim",
        steps=2,
        progress=False,
    ).save(path)
    with pytest.raises(ValueError, match="not a recording saved by minip2p"):
        Recording.load(path)


def test_the_recording_keeps_every_place_an_edit_reads(pipe):
    recording = pipe.record(SOURCE, seed=1, steps=2, progress=False)
    hw = tuple(recording.latents.shape[3:])
    cap = minip2p.p2p.self_max_tokens(defaults.SELF_MAX_FRACTION, hw)
    for place in pipe.denoiser.places():
        wanted = place.is_cross or place.tokens(hw) <= cap
        assert (place.name in recording.maps) == wanted
        if wanted:
            assert recording.maps[place.name].shape[:2] == (2, place.heads)
