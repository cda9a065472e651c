"""Sweeps: the spec (every bad line reported before any work), results that resume and never mix, the same
images whatever the number of workers (local processes or Ray), metrics and filters, and an interruption
(SIGKILL to a worker, SIGINT to the driver) that loses nothing finished and leaves nothing half-written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

import minip2p
from minip2p.checkpoint import model_path
from minip2p.metrics import CLIP_METRICS, SHAPES_METRICS
from minip2p.sweep import SpecError, read_results
from minip2p.text import TOKENIZER_DIR, TextConfig, load_tokenizer

SWAP = (
    "a red circle and a blue square on a white background",
    "a red triangle and a blue square on a white background",
)
STEPS = 6
SPEC = [
    {
        "source": SWAP[0],
        "target": SWAP[1],
        "seeds": [0, 1],
        "cross_replace_steps": [0.0, 0.8],
        "steps": STEPS,
    },
    {"id": "weights", "source": SWAP[0], "target": SWAP[0], "reweight": {"square": 0.0}, "steps": STEPS},
]


def write_spec(path, lines):
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return path


def comparable(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def images(out, records):
    return {name: (out / name).read_bytes() for r in records for name in r["images"].values()}


def test_every_bad_line_is_reported_before_any_work(tmp_path, cli):
    lines = [
        json.dumps({"source": "a red circle", "target": "a blue circle"}),
        "{not json",
        json.dumps({"source": "a red circle"}),
        json.dumps({"source": "a red circle", "target": "a blue square and more", "kind": "replace"}),
        json.dumps({"source": "a red circle", "target": "a blue circle", "seeds": [-1]}),
        json.dumps({"source": "a red circle", "target": "a blue circle", "cross_replace_steps": [0.5, 1.5]}),
        json.dumps({"source": "a red circle", "target": "a blue circle", "blend": ["dog"], "colour": 1}),
        json.dumps({"id": "a/b", "source": "a red circle", "target": "a blue circle"}),
        json.dumps({"id": "x", "source": "a red circle", "target": "a blue circle", "steps": 0}),
        json.dumps({"id": "x", "source": "a red circle", "target": "a green circle"}),
    ]
    spec = tmp_path / "spec.jsonl"
    spec.write_text("\n".join(lines) + "\n")
    code, out, err = cli("sweep", spec, "--out", tmp_path / "out", "--quiet")
    assert code == 1
    for n, what in [
        (2, "not JSON"),
        (3, 'needs "source" and "target"'),
        (4, "a word swap (Replace) needs prompts with the same number of words"),
        (5, "seed must be between 0"),
        (6, "cross_replace_steps must be a fraction"),
        (7, "unknown keys ['colour']"),
        (8, '"id" must be up to 100 letters'),
        (9, "steps must be between 1"),
    ]:
        assert f"line {n}: {what}" in err, (n, err)
    assert "line 1:" not in err and "line 10:" not in err  # line 9 is bad: its id "x" is line 10's to take
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_sweep_runs_resumes_and_refuses_to_mix_specs(tmp_path):
    out = tmp_path / "out"
    records = minip2p.sweep(SPEC, out, progress=False)
    assert len(records) == 5 and len({r["key"] for r in records}) == 5
    first = records[0]
    assert first["settings"]["kind"] == "replace" and first["settings"]["self_replace_steps"] is None
    assert first["settings"]["guidance_scale"] is None and "spec" not in first  # each line once, by id:
    specs = [json.loads(line) for line in (out / "specs.jsonl").read_text().splitlines()]
    assert [s["spec"] for s in specs] == SPEC and [s["id"] for s in specs][1] == "weights"
    assert set(first["metrics"]) == set(SHAPES_METRICS) and first["kept"] is None
    assert records[4]["settings"]["kind"] == "reweight" and records[4]["settings"]["seed"] == 0
    for r in records:
        for name in r["images"].values():
            assert Image.open(out / name).size == (64, 64)
    on_disk = (out / "results.jsonl").read_text()
    again = minip2p.sweep(SPEC, out, progress=False)  # nothing to do: nothing recomputed, nothing rewritten
    assert again == records and (out / "results.jsonl").read_text() == on_disk
    more = SPEC + [{"id": "more", "source": SWAP[0], "target": SWAP[1], "seed": 5, "steps": STEPS}]
    assert (
        len(minip2p.sweep(more, out, progress=False)) == 6 and on_disk in (out / "results.jsonl").read_text()
    )
    changed = [dict(SPEC[1], reweight={"square": 2.0})]
    with pytest.raises(SpecError, match="line 1: id 'weights' has results .* for another spec"):
        minip2p.sweep(changed, out, progress=False)


@pytest.mark.slow  # processes: out of the fast suite, in CI
def test_two_worker_processes_give_the_same_results(tmp_path):
    one = minip2p.sweep(SPEC, tmp_path / "one", progress=False)
    two = minip2p.sweep(SPEC, tmp_path / "two", workers=2, progress=False)
    assert comparable(one) == comparable(two)
    assert images(tmp_path / "one", one) == images(tmp_path / "two", two)  # bit for bit


@pytest.mark.slow  # processes: out of the fast suite, in CI
def test_ray_workers_give_the_same_results(tmp_path):
    pytest.importorskip("ray", reason="the [scale] extra is part of [dev]: CI runs this")
    one = minip2p.sweep(SPEC, tmp_path / "one", progress=False)
    ray = minip2p.sweep(SPEC, tmp_path / "ray", workers=2, ray=True, progress=False)
    assert comparable(one) == comparable(ray)
    assert images(tmp_path / "one", one) == images(tmp_path / "ray", ray)


def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch, cli):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    code, out, err = cli("sweep", write_spec(tmp_path / "s.jsonl", SPEC), "--out", tmp_path / "o", "--ray")
    assert code == 1 and "pip install 'minip2p[scale]'" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A small random CLIPModel with its processor, saved as a user's local folder would be."""
    path = tmp_path_factory.mktemp("clip")
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision = dict(text, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(
        image_processor=image, tokenizer=load_tokenizer(TextConfig(), TOKENIZER_DIR)
    ).save_pretrained(path)
    return path


def test_clip_metrics_and_keep_filters(tmp_path, clip_folder, cli):
    spec = [
        {"id": "same", "source": SWAP[0], "target": SWAP[0], "reweight": {"square": 1.0}, "steps": STEPS},
        {"id": "swap", "source": SWAP[0], "target": SWAP[1], "steps": STEPS},
    ]
    path = write_spec(tmp_path / "s.jsonl", spec)
    code, out, err = cli(
        "sweep", path, "--out", tmp_path / "o", "--clip", clip_folder, "--keep", "clip_img>=0.99999"
    )
    assert code == 0, err
    same, swap = read_results(tmp_path / "o" / "results.jsonl").values()
    assert set(same["metrics"]) == set(SHAPES_METRICS + CLIP_METRICS)
    assert same["metrics"]["clip_img"] == pytest.approx(1.0, abs=1e-6)  # Reweight at 1 is no edit
    assert same["metrics"]["clip_dir"] == pytest.approx(0.0, abs=1e-5)  # no image change: no direction
    assert -1 <= swap["metrics"]["clip_dir"] <= 1 and swap["metrics"]["clip_img"] < 0.99999
    assert same["kept"] is True and swap["kept"] is False and "1 kept by --keep" in out
    for keep, message in [("clip_x>=1", "computes no 'clip_x'"), ("clip_img=>1", "write a condition as")]:
        code, out, err = cli("sweep", path, "--out", tmp_path / "o2", "--keep", keep)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_clip_metrics_need_a_clip_folder(tmp_path, cli):
    path = write_spec(tmp_path / "s.jsonl", SPEC)
    code, out, err = cli("sweep", path, "--out", tmp_path / "o", "--keep", "clip_dir>=0.2")
    assert code == 1 and "computes no 'clip_dir'" in err
    code, out, err = cli("sweep", path, "--out", tmp_path / "o", "--clip", tmp_path)
    assert code == 1 and "not a CLIP model folder" in err


def children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def ctrl_c():
    """A shell without job control (CI) starts background commands with SIGINT ignored, and so their
    children: give the driver Ctrl-C back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, timeout=120):
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.1)


@pytest.mark.slow  # processes: out of the fast suite, in CI
def test_an_interrupted_sweep_loses_nothing_and_resumes(tmp_path):
    """SIGKILL to one of two workers (the driver starts them again), then SIGINT to the driver half-way; the
    re-run does only what was left, and the results hold every item once, each with its two whole images."""
    spec = [
        {"id": f"e{i}", "source": SWAP[0], "target": SWAP[1], "seeds": [0, 1], "steps": 12} for i in range(12)
    ]
    path, out = write_spec(tmp_path / "s.jsonl", spec), tmp_path / "o"
    results = out / "results.jsonl"
    command = [sys.executable, "-m", "minip2p", "sweep", str(path), "--out", str(out), "--workers", "2"]
    command += ["--batch", "1"]  # results one by one, as the waits below count them (batched resumes: below)
    driver = subprocess.Popen(command + ["--quiet"], stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c)
    wait_for(lambda: lines(results) >= 2)
    workers = [
        c for c in children(driver.pid) if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()
    ]
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: lines(results) >= 6)
    driver.send_signal(signal.SIGINT)
    err = driver.communicate(timeout=60)[1]
    assert driver.returncode == 130 and "run the same command again" in err and "worker died" in err
    finished = lines(results)
    assert 6 <= finished < 24 and not list(out.rglob("*.tmp"))  # nothing half-written
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{24 - finished} of 24 edits to do" in rerun.stderr  # nothing finished is recomputed
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted({r["key"] for r in records}) and len(records) == 24
    for r in records:
        for name in r["images"].values():
            Image.open(out / name).verify()  # a whole PNG
    assert not list(out.rglob("*.tmp")) and len(list((out / "images").iterdir())) == 48


def test_a_failing_edit_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, cli):
    edit = minip2p.Pipeline.edit

    def fails_for_squares(self, source, targets, **options):
        if any("square" in t and "triangle" not in t for t in targets):
            raise ValueError("this edit cannot be done")
        return edit(self, source, targets, **options)

    monkeypatch.setattr(minip2p.Pipeline, "edit", fails_for_squares)
    spec = [SPEC[0], dict(SPEC[1], id="fails")]  # in a batch with SPEC[0]'s seed 0: run alone, it fails
    code, out, err = cli("sweep", write_spec(tmp_path / "s.jsonl", spec), "--out", tmp_path / "o", "--quiet")
    assert code == 0 and "5 edits" in out and "1 failed" in out
    failed = read_results(tmp_path / "o" / "results.jsonl")["fails_seed0_cross0.8_selfdefault"]
    assert failed["error"] == "this edit cannot be done" and failed["images"] == {}
    monkeypatch.setattr(minip2p.Pipeline, "edit", edit)  # the cause gone (out of memory, say): a re-run
    code, out, err = cli("sweep", write_spec(tmp_path / "s.jsonl", spec), "--out", tmp_path / "o")
    assert code == 0 and "1 of 5 edits to do (4 finished; 1 that failed before tried again)" in err
    assert "error" not in read_results(tmp_path / "o" / "results.jsonl")["fails_seed0_cross0.8_selfdefault"]


def test_a_resume_with_other_options_or_a_bad_model_is_refused(tmp_path, cli):
    spec = write_spec(tmp_path / "s.jsonl", SPEC[1:])
    assert cli("sweep", spec, "--out", tmp_path / "o", "--quiet")[0] == 0
    code, out, err = cli("sweep", spec, "--out", tmp_path / "o", "--dtype", "bfloat16", "--quiet")
    assert code == 1 and "made with other options (dtype 'float32' -> 'bfloat16')" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not weights")
    code, out, err = cli("sweep", spec, "--out", tmp_path / "o2", "--weights", bad, "--quiet")
    assert code == 1 and "is not a readable .safetensors file" in err and len(err.strip().splitlines()) == 1


def test_a_last_line_cut_short_is_dropped_and_a_whole_one_kept(tmp_path):
    out = tmp_path / "o"
    records = minip2p.sweep(SPEC[1:], out, progress=False)
    path = out / "results.jsonl"
    line = json.dumps(records[0])
    path.write_text(line)  # whole, but its newline was not written
    assert minip2p.sweep(SPEC[1:], out, progress=False) == records and path.read_text() == line + "\n"
    path.write_text(line[:-10])  # cut short: the edit is done again
    assert comparable(minip2p.sweep(SPEC[1:], out, progress=False)) == comparable(records)
    assert path.read_text().count("\n") == 1


def test_a_sweep_takes_the_models_guidance(tmp_path, sdxl_ckpt):
    """No guidance_scale in the spec: the model's own, as pipe.edit's (SDXL 5.0, not SD's 7.5)."""
    path, _, _ = sdxl_ckpt
    spec = [{"id": "g", "source": SWAP[0], "target": SWAP[1], "steps": 2}]
    (record,) = minip2p.sweep(spec, tmp_path / "o", weights=path, progress=False)
    assert record["settings"]["guidance_scale"] is None
    pipe, threads = minip2p.load(path), torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's edits run (threads=1): the same last bits
    try:
        for scale, same in ((None, True), (5.0, True), (7.5, False)):
            edited = pipe.edit(SWAP[0], SWAP[1], seed=0, steps=2, guidance_scale=scale, progress=False)[1]
            got = np.asarray(Image.open(tmp_path / "o" / record["images"]["edited"]))
            assert np.array_equal(got, np.asarray(edited)) == same, scale
    finally:
        torch.set_num_threads(threads)


def test_batches_are_a_function_of_the_spec_and_equal_the_edits_one_by_one(tmp_path):
    from minip2p.sweep import batches
    from minip2p.sweep_spec import read_spec

    spec = SPEC + [{"id": "dpm", "source": SWAP[0], "target": SWAP[1], "sampler": "dpm++", "steps": 4}]
    tokenizer = load_tokenizer(TextConfig(), TOKENIZER_DIR)
    items = read_spec(spec, tokenizer)
    grouped = batches(items, 2)
    assert [len(b) for b in grouped] == [2, 1, 2, 1]  # seed 0: 2 swaps + the reweight; seed 1; dpm++
    assert [i.key for b in grouped for i in b] == [i.key for i in items if i.settings["seed"] == 0][:3] + [
        i.key for i in items if i.settings["seed"] == 1
    ] + [items[-1].key]
    one = minip2p.sweep(spec, tmp_path / "one", batch=1, progress=False)
    four = minip2p.sweep(spec, tmp_path / "four", batch=4, progress=False)
    assert [r["key"] for r in one] == [r["key"] for r in four] and one[-1]["settings"]["sampler"] == "dpm++"
    for a, b in zip(one, four):
        for name in a["images"]:
            pa, pb = (
                np.asarray(Image.open(d / r["images"][name]), dtype=int)
                for d, r in [(tmp_path / "one", a), (tmp_path / "four", b)]
            )
            assert np.abs(pa - pb).max() <= 1  # within 1e-3 of the image: one level of 8 bits
    results = tmp_path / "four" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one item of a batch lost: it is run again
    again = minip2p.sweep(spec, tmp_path / "four", batch=4, progress=False)
    assert comparable(again) == comparable(four) and images(tmp_path / "four", again) == images(
        tmp_path / "four", four
    )
    with pytest.raises(ValueError, match="batch 4 -> 2"):
        minip2p.sweep(spec, tmp_path / "four", batch=2, progress=False)


def test_the_analyser_scores_a_shapes_model_of_your_own_when_asked(tmp_path):
    """A model given by path gets the analyser's metrics with shapes=True only (a bundled one by default);
    the folder keeps that choice where it is not the default, so a resume cannot switch it and a folder
    written before the option resumes as it was."""
    own = tmp_path / "my-shapes.safetensors"
    own.write_bytes(model_path(None).read_bytes())
    (plain,) = minip2p.sweep(SPEC[1:], tmp_path / "plain", weights=own, progress=False)
    (scored,) = minip2p.sweep(SPEC[1:], tmp_path / "scored", weights=own, shapes=True, progress=False)
    assert plain["metrics"] == {} and set(scored["metrics"]) == set(SHAPES_METRICS)
    options = json.loads((tmp_path / "scored" / "sweep.json").read_text())
    assert options["shapes"] is True
    with pytest.raises(ValueError, match=r"other options \(shapes True -> None\)"):
        minip2p.sweep(SPEC[1:], tmp_path / "scored", weights=own, progress=False)
    minip2p.sweep(SPEC[1:], tmp_path / "bundled", progress=False)
    assert "shapes" not in json.loads((tmp_path / "bundled" / "sweep.json").read_text())
    with pytest.raises(ValueError, match="shapes='yes': give True, False or None"):
        minip2p.sweep(SPEC[1:], tmp_path / "bad", weights=own, shapes="yes", progress=False)
