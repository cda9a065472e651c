"""The package as a user installs it: an sdist built from this checkout, a wheel built from that sdist, the
wheel installed into a folder of its own (no dependencies: this venv's torch and transformers serve), and used
from another directory. The wheel must carry the bundled model and the tokenizer."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import minip2p

ROOT = Path(__file__).resolve().parent.parent


def python(*args, cwd, env=None):
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def build(kind: str, source: Path, out: Path) -> Path:
    """setuptools' PEP 517 hook, as pip and `python -m build` call it."""
    name = python(
        "-c", f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))", cwd=source
    )
    return out / name.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """-> (site folder holding the installed package, environment that puts it first on the path)."""
    tmp = tmp_path_factory.mktemp("install")
    sdist = build("sdist", ROOT, tmp)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "src", filter="data")
    wheel = build("wheel", tmp / "src" / sdist.name.removesuffix(".tar.gz"), tmp)
    site = tmp / "site"
    python(
        "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    return site, env, wheel


def test_the_wheel_carries_the_model_and_the_tokenizer(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "minip2p/data/shapes.safetensors",
        "minip2p/data/tokenizer/vocab.json",
        "minip2p/data/tokenizer/merges.txt",
    } <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)


def test_the_installed_package_runs_from_elsewhere(installed, tmp_path):
    site, env, _ = installed
    out = python("-c", "import minip2p; print(minip2p.__file__, minip2p.__version__)", cwd=tmp_path, env=env)
    path, version = out.split()
    assert Path(path).is_relative_to(site) and version == minip2p.__version__
    python("-m", "minip2p", "demo", "--steps", "2", "--quiet", cwd=tmp_path, env=env)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # a checkpoint of our own (not the bundled one) finds the tokenizer in the installed package too
    script = (
        "import minip2p; from minip2p.testing import small_config, write_checkpoint; "
        "write_checkpoint('m.safetensors', small_config('sd1')); "
        "pipe = minip2p.load('m.safetensors'); print(pipe.tokenizer.name_or_path)"
    )
    tokenizer = python("-c", script, cwd=tmp_path, env=env).strip()
    assert Path(tokenizer).is_relative_to(site)


def test_the_console_script(installed, tmp_path):
    site, env, _ = installed
    r = subprocess.run([str(site / "bin" / "minip2p"), "--version"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"minip2p {minip2p.__version__}", r.stderr
