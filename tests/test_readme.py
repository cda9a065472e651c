"""Every Python block of the README runs as written (in order, in one namespace, in a fresh folder), except
the ones marked as needing real Stable Diffusion weights."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
NEEDS_WEIGHTS = "# needs real Stable Diffusion weights"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_marks_what_needs_real_weights():
    blocks = python_blocks()
    assert len(blocks) >= 5 and sum(b.startswith(NEEDS_WEIGHTS) for b in blocks) == 2  # SD, SD3


@pytest.mark.slow
def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in python_blocks():
        if not block.startswith(NEEDS_WEIGHTS):
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "edit.png").exists() and (tmp_path / "maps.png").exists()
    assert (tmp_path / "photo.inversion.safetensors").exists()
