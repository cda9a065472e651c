"""Execute the notebooks top to bottom on the bundled model, in a fresh kernel each, and save them with their
outputs.

    python scripts/run_notebooks.py [--check] [notebooks/01_prompt_to_prompt.ipynb ...]

The committed notebooks carry outputs so that they read well without running; run this after changing one.
--check runs them without saving (what tests/test_notebooks.py does): any error fails, naming the cell.
"""

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from minip2p.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent


def execute(path: Path, timeout: int = 600):
    """Run every cell of the notebook at `path` in a fresh kernel (cwd: the repo root) -> the executed
    notebook."""
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return nb


def images(nb) -> int:
    outputs = (o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return sum("image/png" in o.get("data", {}) for o in outputs)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="run without saving")
    p.add_argument("paths", nargs="*", type=Path)
    args = p.parse_args()
    for path in args.paths or sorted((ROOT / "notebooks").glob("*.ipynb")):
        t0 = time.time()
        nb = execute(path)
        if not args.check:
            with atomic_write(path) as tmp:
                nbformat.write(nb, str(tmp))
        print(f"{path}: executed in {time.time() - t0:.0f} s, {images(nb)} images")


if __name__ == "__main__":
    main()
