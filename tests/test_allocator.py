"""The batch and stream loops keep freed result-sized blocks in the heap (radint._allocator)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Stacks of results as the loops make them: eight arrays of 5-7 MB at a time, in a worker
# thread (its own glibc arena) and in the main thread; page faults counted after a first round.
CHURN = """
import resource, threading
import numpy as np
from radint._allocator import keep_freed_memory

kept = keep_freed_memory()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def work():
    for k in range(10):
        arrays = [np.ones((5 + k % 3) << 17) for _ in range(8)]
        del arrays

work()
before = faults()
t = threading.Thread(target=work)
t.start()
t.join()
work()
print(kept, faults() - before)
"""

glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def churn(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RADINT_KEEP"))}
    out = subprocess.run(
        [sys.executable, "-c", CHURN], env={**clean, **env}, capture_output=True, text=True,
        check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not glibc, reason="glibc's mallopt only")
def test_freed_result_blocks_come_back_without_page_faults() -> None:
    kept, faults_kept = churn()
    default, faults_default = churn(RADINT_KEEP_FREED_MEMORY="0")
    assert kept and not default
    # 160 arrays of 5-7 MB touched: ~200 000 pages if every one arrived fresh.
    assert faults_default > 20_000
    assert faults_kept < 0.3 * faults_default, (faults_kept, faults_default)


@pytest.mark.skipif(not glibc, reason="glibc's mallopt only")
def test_a_users_own_glibc_settings_stand() -> None:
    kept, _ = churn(MALLOC_TRIM_THRESHOLD_="131072")
    assert not kept
