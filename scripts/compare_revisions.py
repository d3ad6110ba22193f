"""Is behaviour unchanged between two revisions? The same audit, on the same real data, into a store made by each.

    python scripts/compare_revisions.py --before 3eb44c4 [--after WORKTREE] [--vlm DIR] [--out DIR]

Each revision's code runs from its own tree (a `git worktree` of --before; --after defaults to this checkout) in
this environment, with the same tiny Qwen2.5-VL. Into one store per revision:
  1. `run` on the 70 seg-photos with the recognizer judge (the README's main job),
  2. `run` on them again with the tiny Qwen2.5-VL judge,
  3. `eval regions` against their object masks, 4. `eval faithfulness`.
Then `db merge` of each store into a copy of the other (both directions: rows added and conflicts must be 0), the
floats merge leaves out (probability vectors, maps, faithfulness curves) compared bit for bit by key, `matrix
--json`, `compare --json`, `summary --json` and `export --format jsonl` compared apart from times, and every
command's `--help` compared apart from its `Example:` lines. Prints one table; exits 1 on any difference."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOCALJUDGE_TEST_DATA", REPO.parent / "shared" / "data"))
# Values that say when or how long, not what: they differ between any two runs.
TIMES = {"created_at", "started_at", "finished_at", "updated_at", "batch_seconds", "judged_at", "seconds",
         "waited_seconds"}


def worktree(revision: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(folder), revision], check=True,
                   capture_output=True)
    # The cards ship as localjudge.model_cards (package-dir models/): give the tree the same name for its cards.
    link = folder / "localjudge" / "model_cards"
    if not link.exists():
        link.symlink_to(folder / "models")
    return folder


def localjudge(tree: Path, *args, home: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(tree), "LOCALJUDGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "localjudge", *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=tree)


def check(result: subprocess.CompletedProcess) -> str:
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def audit(tree: Path, db: Path, vlm: Path, home: Path) -> None:
    manifest = DATA / "seg-photos" / "labels.csv"
    common = [manifest, "--path-column", "file", "--label-column", "imagenet_indices", "--db", db]
    check(localjudge(tree, "run", *common, "--json", home=home))
    check(localjudge(tree, "run", *common, "--vlm", vlm, "--json", home=home))
    check(localjudge(tree, "eval", "regions", "--db", db, "--mask-column", "mask", "--manifest", manifest,
                     "--path-column", "file", "--json", home=home))
    check(localjudge(tree, "eval", "faithfulness", "--db", db, "--json", home=home))


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def readings(tree: Path, db: Path, home: Path) -> dict:
    found = {name: json.loads(check(localjudge(tree, *command, "--db", db, "--json", home=home)))
             for name, command in (("matrix", ["matrix"]), ("compare", ["compare"]), ("summary", ["summary"]))}
    lines = check(localjudge(tree, "export", "--db", db, "--format", "jsonl", home=home)).splitlines()
    found["export"] = [json.loads(line) for line in lines]
    return without_times(found)


def command_paths(tree: Path, home: Path) -> list[list[str]]:
    """Every command and sub-command, read from the top-level help of each group."""
    paths, groups = [], [[]]
    while groups:
        group = groups.pop(0)
        text = check(localjudge(tree, *group, "--help", home=home))
        if "Commands:" not in text:
            continue
        for line in text.split("Commands:", 1)[1].splitlines():
            match = re.match(r"^  (\S+)", line)
            if match:
                paths.append(group + [match.group(1)])
                groups.append(group + [match.group(1)])
    return paths


def without_examples(text: str) -> str:
    """A help text without its `Example:` paragraph (the heading and the indented lines under it)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.strip() in ("Example:", "Examples:"):
            skipping = True
            continue
        if skipping and (line.startswith("      ") or not line.strip()):
            continue
        skipping = False
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept))


def merged(source: Path, target: Path, tree: Path, home: Path, scratch: Path) -> dict:
    copy = scratch / f"merge-into-{target.stem}.db"
    shutil.copy(target, copy)
    for suffix in ("-wal", "-shm"):
        if Path(str(target) + suffix).exists():
            shutil.copy(Path(str(target) + suffix), Path(str(copy) + suffix))
    return json.loads(check(localjudge(tree, "db", "merge", source, "--into", copy, "--json", home=home)))


# What `db merge` does not compare (a model's floats depend in their last bits on the batch): compared here bit for bit.
BLOBS = (("predictions", "probs"), ("saliency_maps", "map"), ("faithfulness", "deletion_curve"),
         ("faithfulness", "insertion_curve"))


def bitwise(before: Path, after: Path) -> dict[str, tuple[int, int]]:
    """For each stored float vector: (rows with the same key in both stores, of which differ in any bit)."""
    with sqlite3.connect(after) as conn:
        conn.execute("attach database ? as before", [str(before)])
        return {f"{table}.{column}": conn.execute(
            f"select count(*), coalesce(sum(a.[{column}] is not b.[{column}]), 0) from main.[{table}] a "
            f"join before.[{table}] b on a.id = b.id").fetchone() for table, column in BLOBS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the code before the change")
    parser.add_argument("--after", type=Path, default=REPO, help="tree of the code after (default: this checkout)")
    parser.add_argument("--vlm", type=Path, help="tiny Qwen2.5-VL directory (default: built by the --after code)")
    parser.add_argument("--out", type=Path, help="folder for the trees and stores (default: a temporary one)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="localjudge-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    before = worktree(args.before, out / "before-tree") if not (out / "before-tree").exists() else out / "before-tree"
    after = args.after.resolve()
    vlm = args.vlm
    if vlm is None:
        subprocess.run([sys.executable, str(after / "scripts" / "make_tiny_vlms.py"), str(out / "vlms")], check=True,
                       env={**os.environ, "PYTHONPATH": str(after)}, capture_output=True)
        vlm = out / "vlms" / "tiny-qwen2.5-vl"
    stores = {"before": out / "before.db", "after": out / "after.db"}
    for name, tree in (("before", before), ("after", after)):
        if not stores[name].exists():
            audit(tree, stores[name], vlm, home)
    rows = []
    forward = merged(stores["before"], stores["after"], after, home, out)
    backward = merged(stores["after"], stores["before"], after, home, out)
    for label, report in (("db merge before -> after", forward), ("db merge after -> before", backward)):
        rows.append((label, f"{report['added']} rows added, {len(report['conflicts'])} conflicts",
                     report["added"] == 0 and not report["conflicts"]))
    compared = bitwise(stores["before"], stores["after"])
    rows.append(("stored floats bit for bit", ", ".join(f"{name}: {same - differ} of {same} equal"
                                                       for name, (same, differ) in compared.items()),
                 all(differ == 0 and same for same, differ in compared.values())))
    old, new = readings(before, stores["before"], home), readings(after, stores["after"], home)
    for name in ("matrix", "compare", "summary", "export"):
        size = len(old[name]) if isinstance(old[name], list) else len(json.dumps(old[name]))
        rows.append((f"{name} --json" if name != "export" else "export --format jsonl",
                     f"{'identical' if old[name] == new[name] else 'DIFFERENT'} apart from times "
                     f"({size} {'rows' if name == 'export' else 'characters'})", old[name] == new[name]))
    paths = command_paths(before, home)
    helps = {" ".join(p): (check(localjudge(before, *p, "--help", home=home)),
                           check(localjudge(after, *p, "--help", home=home))) for p in paths}
    different = [name for name, (old_help, new_help) in helps.items()
                 if without_examples(new_help).rstrip("\n") != old_help.rstrip("\n")]
    with_examples = sum("Example:" in new_help for _, new_help in helps.values())
    differ = f"; differ: {', '.join(different)}" if different else ""
    rows.append(("--help of every command", f"{len(paths) - len(different)} of {len(paths)} identical apart from "
                 f"the examples ({with_examples} have one){differ}", not different))
    counts = json.loads(check(localjudge(after, "summary", "--db", stores["after"], "--json", home=home)))
    if not args.out:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)
    print(f"stores: {stores['before']} (before, {args.before}) and {stores['after']} (after, {after}); "
          f"{counts['images']} images, {counts['predictions']} predictions, {counts['cams']} maps, "
          f"{counts['judgments']} judgments each")
    print("| check | result | ok |\n|---|---|---|")
    for label, result, ok in rows:
        print(f"| {label} | {result} | {'yes' if ok else 'NO'} |")
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
