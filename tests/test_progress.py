"""Progress where stderr is not a terminal (a scheduler, a log file): plain lines with rate and time left, since a
bar there shows nothing for hours."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from localjudge.progress import BarProgress, LogProgress, NoProgress, duration, progress_bar

from .conftest import REPO, seg_photos_manifest

LINE = re.compile(r"^run: (\d+)/12 images \((\d+\.\d) %\), (\d+\.\d\d) images/s, (.+ left|done in .+)$")


def test_durations_by_hand():
    assert [duration(s) for s in (0.4, 59, 432, 3600 + 61 * 60)] == ["0 s", "59 s", "7 min 12 s", "2 h 1 min"]


def test_log_lines_count_rate_and_time_left():
    stream = io.StringIO()
    bar = LogProgress(100, "judge", "batch", 0.0, stream)
    bar.started -= 10.0  # ten seconds in
    bar.update(25)
    bar.close()
    first, last = stream.getvalue().splitlines()
    rate = float(re.search(r"(\d+\.\d\d) batches/s", first).group(1))
    assert first.startswith("judge: 25/100 batches (25.0 %), ") and 2.49 <= rate <= 2.51
    assert first.endswith(" left") and re.search(r"(29|30) s left", first)  # 75 more at 2.5 a second
    assert last.startswith("judge: 25/100 batches (25.0 %)") and "done in 10 s" in last


def test_a_stage_that_raised_says_it_stopped(capsys):
    """The last line of a stage that raised (the judge's circuit breaker, a crash) says so, not "done"."""
    from localjudge.progress import progress

    def failing():
        yield 1
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        for _ in progress(failing(), 3, "judge", True, 60.0):  # stderr here is pytest's capture: no terminal
            pass
    for _ in progress(range(2), 2, "explain", True, 60.0):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("judge: 1/3 batches (33.3 %)") and ", stopped after " in lines[0]
    assert lines[1].startswith("explain: 2/2 batches (100.0 %)") and ", done in " in lines[1]


def test_a_bar_on_a_terminal_and_nothing_when_not_asked():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = progress_bar(5, "x", "image", True, 1.0, Terminal())
    assert isinstance(bar, BarProgress) and isinstance(bar.bar, tqdm)
    assert isinstance(progress_bar(5, "x", "image", True, 1.0, io.StringIO()), LogProgress)
    assert isinstance(progress_bar(5, "x", "image", False, 1.0, io.StringIO()), NoProgress)


def test_a_run_with_stderr_in_a_file_logs_its_progress(data_dir, tmp_path):
    manifest = seg_photos_manifest(data_dir, tmp_path / "photos.csv", 12)
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        done = subprocess.run([sys.executable, "-m", "localjudge", "run", str(manifest), "--db", str(tmp_path / "a.db"),
                               "--progress-seconds", "0", "--judge-batch-size", "4"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=600)
    lines = [m for m in map(LINE.match, log.read_text().splitlines()) if m]
    assert done.returncode == 0, log.read_text()
    assert len(lines) >= 3 and lines[-1].group(4).startswith("done in") and int(lines[-1].group(1)) == 12
    assert all(m.group(4).endswith(" left") for m in lines[:-1])
    counts = [int(m.group(1)) for m in lines]
    assert counts == sorted(counts) and all(float(m.group(3)) > 0 for m in lines)


def test_a_continuous_judge_counts_the_maps_another_run_holds_as_done(data_dir, tmp_path, tiny_vlms_bpe512):
    """The transformers judge's progress (ContinuousJudging's count of maps done with) reaches the total when a map
    is left to another live run's lease: it is counted as done elsewhere, not waited for."""
    import os
    import socket

    from localjudge.pipeline import Stage, lease_holder_alive, open_audit
    from localjudge.pipeline.continuous import ContinuousJudging

    from .conftest import invoke

    manifest = seg_photos_manifest(data_dir, tmp_path / "three.csv", 3)
    db = tmp_path / "leased.db"
    invoke("predict", manifest, "--db", db)
    invoke("explain", "--db", db)
    audit = open_audit(db, None, ("judge",), show_progress=False, vlm=str(tiny_vlms_bpe512["qwen2_5_vl"]),
                       judge="transformers", device="cpu", max_new_tokens=8)
    maps = [r["id"] for r in audit.store.query("select id from saliency_maps order by id")]
    other = {"owner": "another run", "host": socket.gethostname(), "pid": os.getppid(), "seconds": 600.0}
    held = audit.judgment_keys(maps[:1])[maps[0]]
    assert audit.store.claim_judgments([held], other, lease_holder_alive) == {held}
    done: list[int] = []
    stage = Stage()
    with audit.recorded("judge", None):
        judging = ContinuousJudging.open_for(audit, stage, done.append)
        assert judging is not None  # the transformers judge takes requests while it writes answers
        judging.submit(maps, {})
        judging.finish()
    audit.store.close()
    assert stage.elsewhere == 1 and stage.computed == 2
    assert sum(done) == 3
