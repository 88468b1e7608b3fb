"""The environment fingerprint stored in every manifest: what could explain a difference between runs."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def environment_fingerprint(device: str = "cpu") -> dict[str, Any]:
    import numpy as np
    import torch

    doc: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": device,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cuda_available": torch.cuda.is_available(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        doc["cuda"] = torch.version.cuda
        doc["gpu"] = torch.cuda.get_device_name(torch.device(device))
        doc["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    return doc
