"""kill -9 in the middle of a run, then a re-run: every image ends with exactly one prediction, map and judgment,
and two runs on one database at once both complete, each map judged by one of them (scripts/kill_resilience.py,
here with 3 trials; the closing notes carry its 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import DATA, REPO


def test_killed_runs_resume_without_loss_or_repeats_and_concurrent_runs_complete():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kill_resilience.py"), "--trials", "3", "--images", "10",
         "--seed", "3", "--concurrent", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
        env={**os.environ, "LOCALJUDGE_TEST_DATA": str(DATA)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["images"] == 10 and summary["passed"] == summary["trials"] == 3
    for trial in summary["results"]:
        assert trial["after"]["judgments"] == trial["after"]["predictions"] == 10
        assert trial["only_missing_redone"], trial  # what the killed run stored was kept, not redone
    # at least one run was killed with work left, which the re-run did
    assert any(sum(t["rerun_computed"].values()) > 0 for t in summary["results"])
    assert summary["concurrent"]["ok"] and summary["concurrent"]["return_codes"] == [0, 0]
    # the two runs split the judge work: each map judged once across them (their leases), not once by each
    assert sum(summary["concurrent"]["judged"]) == 10 and summary["concurrent"]["judged_once"]
