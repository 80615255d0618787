import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CBDM_SHARED_DATA", REPO.parent / "shared" / "data"))


# Under pytest-xdist (`-n 2`) every worker gets one core: two workers of two threads each would
# spin against each other on a 2-core machine. Subprocesses started by tests inherit the setting.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny `cbdm train` config of the CLI tests as a factory: ``tiny_config(**overrides)``
    is a fresh deep copy of ``tests.helpers.TINY`` with dotted (``{"optim.steps": 2}``) or
    nested (``optim={"steps": 2}``, merged into the section) overrides;
    ``tiny_config.write(path, ...)`` writes it as YAML. Session-scoped: it holds no state."""
    from tests.helpers import TinyConfig

    return TinyConfig()


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception v3 architecture with RANDOM weights, saved in the format
    torch-fidelity loads. Exercises the loading path only: never a real FID."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class Unloaded(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if state_dict is None:  # skip the weight loading done in __init__
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: None)
    try:
        torch.manual_seed(0)
        net = Unloaded("inception-v3-compat", ["2048"])
    finally:
        mp.undo()
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def pytest_report_header(config) -> str:
    """Say up front whether float fixtures are compared exactly here (tests/kernel_fingerprint.py)."""
    from tests.kernel_fingerprint import KernelFingerprint, compare, current

    here = current()
    how = compare(KernelFingerprint.from_json(REPO / "tests" / "fixtures" / "train-reference-machine.json"), here)
    return f"cpu: {here.model_name} ({here.vendor}, torch capability {here.capability}); training fixtures: {how.describe()}"
