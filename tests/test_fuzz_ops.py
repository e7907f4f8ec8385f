"""Fuzz suite for the raw ops (torch.ops.domino.*), as engines call them: every argument of every
op malformed in turn (tests/fuzz_cases.py). Each op's cases run in a fresh subprocess, so a crash
fails that op's test (naming the case it died in) instead of killing pytest. A case passes when
the call raises an exception naming the offending argument, or returns its documented result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz_cases import GROUPS

ROOT = Path(__file__).resolve().parent.parent

def run_group(group: str):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz_cases", group], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, records


@pytest.mark.parametrize("group", GROUPS)
def test_malformed_calls_raise_naming_the_argument(group):
    proc, records = run_group(group)
    started = [r["case"] for r in records if r.get("started")]
    finished = [r for r in records if "ok" in r]
    if proc.returncode != 0:
        last = started[-1] if started else "(before the first case)"
        pytest.fail(f"{group}: the process died (return code {proc.returncode}) in case "
                    f"{last!r}\n{proc.stderr[-3000:]}")
    assert len(finished) == len(started) > 0
    failures = [f"{r['case']}: {r['detail']}" for r in finished if not r["ok"]]
    assert not failures, f"{group}: {len(failures)} of {len(finished)} cases\n" + "\n".join(failures)
