"""gclip: gradient clipping for training loops, on the CPU and on CUDA GPUs.

    import gclip.torch as gt
    norm = gt.clip_grad_norm_(model.parameters(), 1.0)     # drop-in for torch.nn.utils

    clipper = gclip.Clipper(max_norm=1.0)                    # native API, any __dlpack__ array
    clipper.clip_grad_norm(grads)
    clipper.result().total_norm

`gclip.torch` holds the PyTorch drop-ins and torch.library ops, `gclip.jax`
the functional JAX variant.
"""

from ._lib import (  # noqa: F401
    GclipError,
    InvalidArgumentError,
    NonFiniteError,
    NotSupportedError,
    cuda_device_count,
    has_function,
    version_string as _version_string,
)
from ._core import Clipper, ClipResult, DeviceResultView, Plan  # noqa: F401
from .adaptive import AGCClipper, AdaptiveClipper, AdaptiveInfo, AdaptiveInfoView  # noqa: F401

__version__ = "0.2.0"
library_version = _version_string()

__all__ = [
    "Clipper", "ClipResult", "DeviceResultView", "Plan",
    "GclipError", "InvalidArgumentError", "NonFiniteError", "NotSupportedError",
    "cuda_device_count", "has_function", "library_version",
]
__all__ += ["AGCClipper", "AdaptiveClipper", "AdaptiveInfo", "AdaptiveInfoView"]
