"""Helpers for the neocaffe.io tests: where ../shared is (skip with a reason when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED


def shared_dir() -> Path:
    """``<repo>/../shared``; skips the calling test when it is absent (a user's own machine)."""
    shared = SHARED
    if not shared.is_dir():
        pytest.skip(f"reference data not present: {shared} (../shared beside the repo holds real Caffe files)")
    return shared


def shared_file(*parts: str) -> Path:
    """A file under ../shared; skips with a clear reason when it is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file not present: {path}")
    return path


@pytest.fixture
def shared() -> Path:
    return shared_dir()


def shared_params(*patterns: str) -> list:
    """pytest params (ids relative to ../shared) for every file matching ``patterns``, collected at import
    time; one skipped param with the reason when ../shared is absent."""
    shared = SHARED
    paths = sorted({p for pattern in patterns for p in shared.glob(pattern)}) if shared.is_dir() else []
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no {patterns} under {shared}"))]
    return [pytest.param(p, id=str(p.relative_to(shared))) for p in paths]
