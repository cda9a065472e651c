"""Every notebook runs top to bottom on the bundled shapes model, in a fresh kernel, without an error, and
shows its pictures (through scripts/run_notebooks.py --check, as a maintainer runs it)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_prompt_to_prompt.ipynb", "02_attention_maps.ipynb", "03_real_image_editing.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    script = ROOT / "scripts" / "run_notebooks.py"
    r = subprocess.run([sys.executable, str(script), "--check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    shown = int(re.search(r"(\d+) images", r.stdout).group(1))
    assert shown >= 3, f"{path.name} shows {shown} images"
