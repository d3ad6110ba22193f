#!/usr/bin/env python
"""The malformed-input table: a corpus of broken and unusual files (tests/malformed.py, made from the real images
in shared/data), one `localjudge run` over all of them, and what became of each file.

    python scripts/malformed_inputs.py
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sample_data import DATA  # noqa: E402
from tests.malformed import build_corpus  # noqa: E402


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="malformed-"))
    corpus = build_corpus(DATA, folder / "corpus")
    db = folder / "malformed.db"
    result = subprocess.run([sys.executable, "-m", "localjudge", "run", str(folder / "corpus"), "--db", str(db),
                             "--json"], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    stages = json.loads(result.stdout)
    with sqlite3.connect(db) as conn:
        errors = dict(conn.execute("select path, reason from read_errors"))
        judged = dict(conn.execute(
            "select i.path, i.width || 'x' || i.height || ' ' || i.mode || ', predicted ' || p.predicted_label || "
            "', judged ' || j.score from images i join predictions p on p.image_sha256 = i.sha256 "
            "join judgments j on j.prediction_id = p.id"))
    print("| input | expected | outcome |\n|---|---|---|")
    wrong = 0
    for name, (path, expected) in corpus.items():
        outcome = f"stored error: {errors[str(path)]}" if str(path) in errors else (
            f"read: {judged[str(path)]}" if str(path) in judged else "MISSING")
        matches = (expected == "read" and outcome.startswith("read")) or (
            expected.startswith("error") and outcome.startswith("stored error: " + expected[len("error: "):]))
        wrong += not matches
        print(f"| {name} | {expected} | {outcome}{'' if matches else ' (UNEXPECTED)'} |")
    print(f"\nthe run went on: {stages['ingest']['failed']} files stored as errors, {stages['judge']['rows']} "
          f"judged; {wrong} unexpected outcomes")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
