"""Sweeps as a hostile or careless user drives them: every bad spec, tampered folder and odd path is one line
(and touches nothing outside --out); a folder holds one sweep at a time; records stay small whatever a line's
size; workers end with their driver however it ends."""

import importlib
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

import minip2p
from minip2p.sweep_spec import read_spec
from minip2p.text import TextConfig, load_tokenizer

sweep_module = importlib.import_module("minip2p.sweep")  # minip2p.sweep is the function
SWAP = (
    "a red circle and a blue square on a white background",
    "a red triangle and a blue square on a white background",
)
LINE = {"id": "e", "source": SWAP[0], "target": SWAP[1], "steps": 2}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TextConfig())


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and len(lines[0]) < 400, err
    return lines[0]


BAD_LINES = [  # (a spec line as written in the file, what the error must say)
    (json.dumps(dict(LINE, kind=["replace"])), "kind must be one of"),
    (json.dumps(dict(LINE, kind="")), "kind must be one of"),
    (json.dumps(dict(LINE, kind=False)), "kind must be one of"),
    (json.dumps(dict(LINE, kind=0)), "kind must be one of"),
    (json.dumps(dict(LINE, target=SWAP[0], reweight={"square": "abc"})), "Reweight scale of 'square'"),
    (json.dumps(dict(LINE, target=SWAP[0], reweight={"square": 1e308})), "Reweight scale of 'square'"),
    (json.dumps(dict(LINE, target=SWAP[0], reweight={"square": True})), "Reweight scale of 'square'"),
    (json.dumps(dict(LINE, cross_replace_steps=[True])), "cross_replace_steps must be"),
    (json.dumps(dict(LINE, self_replace_steps=True)), "self_replace_steps must be"),
    (json.dumps(dict(LINE, seed=True)), "seed must be a whole number"),
    (json.dumps(dict(LINE, seed=int("9" * 4000))), "seed must be between"),
    ('{"id": "a", "id": "b", "source": "x", "target": "y"}', "the key 'id' is given twice"),
    ('{"source": "a red circle", "target": "a red square", "guidance_scale": NaN}', "NaN is not a number"),
    ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    (json.dumps(dict(LINE, sampler=["ddim"])), '"sampler" must be one of'),
]


@pytest.mark.parametrize("text, says", BAD_LINES, ids=range(len(BAD_LINES)))
def test_a_bad_line_is_one_short_line_naming_it(tmp_path, cli, text, says):
    spec = tmp_path / "s.jsonl"
    spec.write_text(text + "\n")
    code, out, err = cli("sweep", spec, "--out", tmp_path / "o")
    line = one_line(err)
    assert code == 1 and "line 1" in line and says in line
    assert not (tmp_path / "o" / "sweep.json").exists()


def test_lines_break_on_newlines_only_and_errors_are_capped(tmp_path, tokenizer):
    spec = tmp_path / "s.jsonl"
    odd = dict(LINE, source=SWAP[0].replace("red", "red\u2028"), target=SWAP[1].replace("red", "red\u0085"))
    spec.write_text(json.dumps(odd, ensure_ascii=False) + "\n" + json.dumps(dict(LINE, id="f")) + "\n")
    assert [i.line for i in read_spec(spec, tokenizer)] == [1, 2]  # no phantom lines, numbers kept
    spec.write_text("{bad\n" * 100_000)
    with pytest.raises(ValueError) as e:
        read_spec(spec, tokenizer)
    assert len(str(e.value).splitlines()) == 21 and "99980 more bad lines" in str(e.value)


def test_the_api_takes_what_pipe_edit_and_load_take(tmp_path):
    """A (start, end) tuple is one window, as in pipe.edit (a list is a grid); numpy seeds; torch dtypes."""
    spec = [dict(LINE, cross_replace_steps=(0.2, 0.6), seeds=[np.int64(3)])]
    (record,) = minip2p.sweep(spec, tmp_path / "o", dtype=torch.float32, progress=False)
    assert record["settings"]["cross_replace_steps"] == [0.2, 0.6] and record["settings"]["seed"] == 3
    assert record["key"] == "e_seed3_cross0.2-0.6_selfdefault"


def test_paths_and_options_are_one_line(tmp_path, cli):
    spec = tmp_path / "s.jsonl"
    spec.write_text(json.dumps(LINE) + "\n")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "nowhere")
    cases = [
        (("sweep", tmp_path, "--out", tmp_path / "o"), "is a folder: give a JSONL file"),
        (("sweep", fifo, "--out", tmp_path / "o"), "is not a regular file"),
        (("sweep", "-", "--out", tmp_path / "o"), "standard input is not supported"),
        (("sweep", tmp_path / "x\x1b[31m.jsonl", "--out", tmp_path / "o"), "\\x1b"),
        (("sweep", spec, "--out", ""), "--out is empty"),
        (("sweep", spec, "--out", dangling), "which is missing"),
        (("sweep", spec, "--out", tmp_path / "o", "--device", "meta"), "minip2p runs on cpu"),
        (("sweep", spec, "--out", tmp_path / "o", "--device", "xla"), "minip2p runs on cpu"),
        (("sweep", spec, "--out", tmp_path / "o", "--ray", "--ray-address", "127.0.0.1:9"), "no Ray cluster"),
    ]
    for args, says in cases:
        code, out, err = cli(*args)
        line = one_line(err)
        assert code == 1 and says in line and "\x1b" not in line, (args, line)
    assert not (tmp_path / "o").exists() and not (tmp_path / "nowhere").exists()


def test_nothing_outside_the_folder_is_written_read_or_returned(tmp_path):
    out, outside = tmp_path / "o", tmp_path / "outside.jsonl"
    (record,) = minip2p.sweep([LINE], out, progress=False)
    results = out / "results.jsonl"
    text = results.read_text()
    for target in (outside, tmp_path / "missing.jsonl"):  # a link to a file, a dangling link
        outside.write_text("mine\n")
        results.unlink()
        results.symlink_to(target)
        with pytest.raises(ValueError, match="is a link"):
            minip2p.sweep([LINE], out, progress=False)
        assert outside.read_text() == "mine\n" and not (tmp_path / "missing.jsonl").exists()
    results.unlink()
    for images in ({"source": "/etc/passwd", "edited": "../../x.png"}, [], "x", None, 3):
        results.write_text(json.dumps(dict(record, images=images)) + "\n")
        with pytest.raises(ValueError, match="line 1 is not a result line of this sweep") as e:
            minip2p.sweep([LINE], out, progress=False)
        assert len(str(e.value).splitlines()) == 1
    for bad in (dict(record, id=["e"]), {k: v for k, v in record.items() if k != "id"}):
        results.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match="not a result line"):
            minip2p.sweep([LINE], out, progress=False)
    results.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ValueError, match="results.jsonl is not UTF-8"):
        minip2p.sweep([LINE], out, progress=False)
    results.write_text(text)
    for options in ("[1, 2]", "null", "[" * 100_000):
        (out / "sweep.json").write_text(options)
        with pytest.raises(ValueError, match="sweep.json"):
            minip2p.sweep([LINE], out, progress=False)
    (out / "sweep.json").unlink()  # results without their options: which threads, which model?
    with pytest.raises(ValueError, match="has results but no sweep.json"):
        minip2p.sweep([LINE], out, progress=False)


def test_options_are_compared_by_what_they_are(tmp_path, monkeypatch):
    out = tmp_path / "o"
    weights = minip2p.checkpoint.BUNDLED_MODEL
    (tmp_path / "fx").mkdir()
    copy = tmp_path / "fx" / "m.safetensors"
    copy.write_bytes(Path(weights).read_bytes())
    monkeypatch.chdir(tmp_path)
    spec = [dict(LINE, id="w")]
    first = minip2p.sweep(spec, out, weights="fx/m.safetensors", keep=None, progress=False)
    assert minip2p.sweep(spec, out, weights="./fx/m.safetensors", progress=False) == first  # one model
    other = tmp_path / "fx2"
    other.mkdir()
    data = bytearray(copy.read_bytes())
    data[-100] ^= 1  # another model under the same name
    (other / "m.safetensors").write_bytes(bytes(data))
    monkeypatch.chdir(other.parent / "fx2")
    with pytest.raises(ValueError, match="weights \\(the model's files\\)"):
        minip2p.sweep(spec, out, weights="m.safetensors", progress=False)


def test_a_sweep_that_cannot_start_leaves_no_options(tmp_path, cli):
    spec = tmp_path / "s.jsonl"
    spec.write_text(json.dumps(LINE) + "\n")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    code, out, err = cli("sweep", spec, "--out", tmp_path / "o", "--clip", clip)
    assert code == 1 and not (tmp_path / "o" / "sweep.json").exists()
    assert cli("sweep", spec, "--out", tmp_path / "o", "--quiet")[0] == 0  # the corrected run


def test_records_stay_small_whatever_the_size_of_their_line(tmp_path, monkeypatch):
    """Each record holds its item, not its line (stored once, in specs.jsonl): the first 2 items of a
    10^6-seed line make records of the size a 2-seed line's do."""
    real = sweep_module.results

    def first_batch_then_ctrl_c(todo, *args):
        yield from real(todo[:2], *args)  # seeds 0 and 1
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "results", first_batch_then_ctrl_c)
    sizes = {}
    for n in (2, 10**6):
        out = tmp_path / str(n)
        with pytest.raises(KeyboardInterrupt):
            minip2p.sweep([dict(LINE, seeds=list(range(n)))], out, batch=2, progress=False)
        records = (out / "results.jsonl").read_text().splitlines()
        sizes[n] = [len(json.dumps(dict(json.loads(r), seconds=0))) for r in records]  # times vary
        assert len(records) == 2 and (out / "specs.jsonl").read_text().count("\n") == 1
    assert sizes[10**6] == sizes[2]


def child_pids(pid: int) -> list:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        path = Path(f"/proc/{p}/task/{p}/children")
        kids = [int(c) for c in path.read_text().split()] if path.exists() else []
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout=120):
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def start_sweep(tmp_path, *extra):
    spec = tmp_path / "s.jsonl"
    spec.write_text("".join(json.dumps(dict(LINE, id=f"e{i}", steps=20)) + "\n" for i in range(8)))
    command = [sys.executable, "-m", "minip2p", "sweep", str(spec), "--out", str(tmp_path / "o"), "--quiet"]
    return subprocess.Popen(
        command + list(extra), stderr=subprocess.PIPE, text=True, start_new_session=True
    ), command


@pytest.mark.slow  # processes
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_worker_outlives_its_driver(tmp_path, how):
    driver, _ = start_sweep(tmp_path, "--workers", "2", "--batch", "1")
    wait_for(lambda: len(child_pids(driver.pid)) >= 3)  # two workers and the resource tracker
    wait_for(lambda: (tmp_path / "o" / "results.jsonl").exists())
    kids = child_pids(driver.pid)
    driver.send_signal(how)
    err = driver.communicate(timeout=60)[1]
    wait_for(lambda: not any(alive(k) for k in kids), timeout=15)
    if how == signal.SIGTERM:
        assert driver.returncode == 130 and "run the same command again" in err and "Traceback" not in err


@pytest.mark.slow  # processes
def test_one_sweep_per_folder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    first, command = start_sweep(tmp_path)
    wait_for(lambda: (tmp_path / "o" / "sweep.lock").exists())
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and f"in use by another sweep (pid {first.pid}" in one_line(second.stderr)
    first.kill()
    first.communicate(timeout=60)
    (tmp_path / "o" / "images" / ".e0_seed0_cross0.8_selfdefault_edited.png.abc.tmp").write_bytes(b"half")
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert len({r["key"] for r in records}) == len(records) == 8 and not list((tmp_path / "o").rglob("*.tmp"))
