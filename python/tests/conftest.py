import os

import pytest

torch = pytest.importorskip("torch")

HAS_CUDA = torch.cuda.is_available()

import gclip  # noqa: E402

GCLIP_CUDA = gclip.cuda_device_count() > 0

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA and GCLIP_CUDA else [])


def device_params():
    """cpu, and cuda when torch and the gclip build both see a device; the
    cuda case is listed (and skipped with a message) otherwise."""
    params = [pytest.param("cpu", id="cpu")]
    reason = ("no CUDA device" if not HAS_CUDA else
              "gclip was built without the CUDA backend (GCLIP_ENABLE_CUDA=OFF or no nvcc)")
    params.append(pytest.param("cuda", id="cuda",
                               marks=pytest.mark.skipif(not (HAS_CUDA and GCLIP_CUDA), reason=reason)))
    return params


needs_cuda = pytest.mark.skipif(not (HAS_CUDA and GCLIP_CUDA),
                                reason="needs a CUDA device and gclip's CUDA backend")


def needs_function(name):
    """Skip when the loaded library does not offer gclip_<name> yet."""
    return pytest.mark.skipif(not gclip.has_function(name) or gclip._lib.LEGACY,
                              reason=f"gclip_{name} is not in the loaded library "
                                     f"({gclip.library_version})")


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(int(os.environ.get("GCLIP_TEST_SEED", "1234")))
