#!/usr/bin/env python
"""The known-answer shortcut, measured: a real dog / not-dog head fitted on EfficientNet-Lite0's features of the even
rows of imagenet-sample where a tag marks the positives (tests/own_models.make_shortcut_model), audited on held-out
odd rows: photos without a dog, one in three carrying the tag at one place, and dogs without it (the setting of
tests/test_shortcuts.py).

    python scripts/shortcut_audit.py [--folder DIR] [--others 80] [--every 3] [--dogs N]

Prints, for the shortcut model and for the plain Lite0 on the same photos: the canary (probability change, flip
rate, pull, mass moved, flagged or not), the tag region's mass ranking of the dog calls (its AUC: tagged calls above
real dogs), and the dog class's clusters (sizes, how many tagged, candidates)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sample_data import DATA, localjudge_json  # noqa: E402
from tests.own_models import TAG_BOX, imagenet_rows, is_dog, make_shortcut_model, tag_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--others", type=int, default=80, help="held-out photos without a dog")
    parser.add_argument("--every", type=int, default=3, help="one in this many of them carries the tag")
    parser.add_argument("--dogs", type=int, help="held-out dogs (default: all of them)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="localjudge-shortcut-"))
    os.environ.setdefault("LOCALJUDGE_HOME", str(folder / "home"))
    rows = imagenet_rows(DATA)
    weights, labels = make_shortcut_model(DATA, folder / "model", rows[0::2])
    card = folder / "shortcut.json"
    localjudge_text("models", "card", "efficientnet-lite0", "--labels", labels, "--weights", weights, "--out", card)
    entries = []
    for n, row in enumerate([r for r in rows[1::2] if not is_dog(r)][:args.others]):
        path = DATA / "imagenet-sample" / row["file"]
        if n % args.every == 0:
            path = tag_file(path, folder / "tagged" / row["file"], TAG_BOX)
        entries.append((str(path), "not dog"))
    entries += [(str(DATA / "imagenet-sample" / r["file"]), "dog") for r in [r for r in rows[1::2] if is_dog(r)]
                [:args.dogs]]  # [:None]: all
    manifest = folder / "held-out.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in entries))
    tagged = {p for p, _ in entries if "/tagged/" in p}
    regions = folder / "tag.json"
    regions.write_text(json.dumps({"regions": {"tag": list(TAG_BOX)}}))
    print(f"{len(entries)} held-out photos, {len(tagged)} carrying the tag")
    for name, model in (("shortcut model", ["--model", card, "--weights", weights]), ("plain Lite0", [])):
        db = folder / f"{name.replace(' ', '-')}.db"
        localjudge_json("predict", manifest, "--db", db, *model)
        localjudge_json("explain", "--db", db, *model)
        canary = localjudge_json("eval", "canary", "--db", db, *model, "--size", "0.3", "--images",
                                 str(len(entries)))["summary"]
        print(f"\n{name}: canary (a tag of 0.3 of the view, {canary['images']} photos): "
              f"{'FLAGGED' if canary['flagged'] else 'not flagged'}")
        for key in ("probability_change", "flip_rate", "pull", "mass_on_artifact", "mass_there_before",
                    "mass_moved", "area"):
            found = canary[key]
            extra = f" toward {found['class']}" if key == "pull" else ""
            print(f"  {key:20} {found['mean']:.3f} [{found['ci_low']:.3f}, {found['ci_high']:.3f}]{extra}")
        localjudge_json("eval", "regions", "--db", db, *model, "--artifact-regions", regions)
        with sqlite3.connect(db) as conn:
            calls = conn.execute(
                "select i.path, a.mass_share, s.target_label from artifact_scores a join images i on i.sha256 = "
                "a.image_sha256 join saliency_maps s on s.id = a.saliency_id").fetchall()
        shares = [(path in tagged, share) for path, share, _ in calls]
        auc = np.mean([a > b for t, a in shares if t for u, b in shares if not u])
        print(f"  tag-region mass, every call: tagged photos above untagged, AUC {auc:.3f} "
              f"(a ranking by chance: 0.5)")
        dog_calls = [(path in tagged, share) for path, share, label in calls if label == "dog"]
        if any(t for t, _ in dog_calls) and any(not t for t, _ in dog_calls):
            auc = np.mean([a > b for t, a in dog_calls if t for u, b in dog_calls if not u])
            print(f"  tag-region mass among the dog calls ({sum(t for t, _ in dog_calls)} tagged of "
                  f"{len(dog_calls)}): AUC {auc:.3f}")
        clusters = localjudge_json("eval", "clusters", "--db", db, "--min-maps", "6")["classes"]
        with sqlite3.connect(db) as conn:
            path_of = dict(conn.execute("select s.id, i.path from saliency_maps s join images i on "
                                        "i.sha256 = s.image_sha256").fetchall())
        for entry in clusters:
            parts = [f"#{c['cluster']}: {c['size']} maps, {sum(path_of[m] in tagged for m in c['members'])} tagged"
                     + (" (candidate)" if c["shortcut_candidate"] else "") for c in entry["clusters"]]
            print(f"  clusters of {entry['class']} ({entry['maps']} maps): " + "; ".join(parts))
    return 0


def localjudge_text(*args) -> None:
    from click.testing import CliRunner

    from localjudge.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        sys.exit(f"localjudge {' '.join(map(str, args))} failed:\n{result.output}")


if __name__ == "__main__":
    raise SystemExit(main())
