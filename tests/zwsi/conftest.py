"""Fixtures shared by the zwsi tests: one torch thread, and the tiny random generation pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on the shared 2-core machine two threads oversubscribe and run the tiny convs 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(one_thread: None):
    """The tiny random generation pipeline (`--model tiny --random-init`), built once per test module."""
    from zwsi.generate.pipeline import SlideGenerator

    return SlideGenerator.from_pretrained("tiny", random_init=True)
