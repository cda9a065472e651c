import pytest

from helpers import small_config, write_checkpoint



@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """Small SD1- and SD2-shaped random checkpoints on disk: {family: (path, state_dict, config)}."""
    out = {}
    for family in ("sd1", "sd2"):
        cfg = small_config(family)
        path = tmp_path_factory.mktemp(family) / f"small_{family}.safetensors"
        sd = write_checkpoint(path, cfg, seed=1 if family == "sd1" else 2)
        out[family] = (path, sd, cfg)
    return out
