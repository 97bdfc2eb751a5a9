"""Fixtures of the tensor-parallel tests (helpers live in tp_support.py)."""

from __future__ import annotations

import pytest
from tp_support import ThreadGroup


@pytest.fixture
def thread_group():
    return ThreadGroup
