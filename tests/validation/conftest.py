"""Validation tests run torch and BLAS on one thread.

On the shared 2-core test machine (load ≈ 7) a 2-thread pool waits at every barrier for a descheduled thread:
measured there, one thread made MONAI SSIM on 256² 6× faster (77 vs 471 ms), MS-SSIM 3× and EfficientNet-Lite0
features 3× faster. The metrics are the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from validation.bootstrap import single_threaded


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    with single_threaded():
        yield
