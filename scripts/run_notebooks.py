"""Execute the notebooks top to bottom on the bundled model and save them with their outputs.

    python scripts/run_notebooks.py [notebooks/01_prompt_to_prompt.ipynb ...]

The committed notebooks carry outputs so that they read well without running; run this after changing one.
tests/test_notebooks.py executes them the same way (without saving) and fails on any error.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute(path, timeout=600):
    """Run every cell of the notebook at `path` in a fresh kernel (cwd: the repo root) -> executed notebook."""
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def main():
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        t0 = time.time()
        nb = execute(path)
        nbformat.write(nb, str(path))
        print(f"{path}: executed in {time.time() - t0:.0f} s, {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
