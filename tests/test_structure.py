"""The house rules, checked on the source: generic code asks a judge backend for a capability, never for its name;
SQL is written only under store/; the executors use the Audit's public methods only; the product never imports its
test support; and importing the CLI (and running the read-only commands) does not load torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from localjudge.judge import JUDGES

from .conftest import REPO, seg_photos_manifest

PACKAGE = REPO / "localjudge"


def sources(*skip: str) -> dict[str, str]:
    """Every product module's text by its path under localjudge/, without the files and folders in `skip`."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not any(name == s or name.startswith(s.rstrip("/") + "/") for s in skip):
            found[name] = path.read_text()
    return found


def code_lines(text: str) -> list[tuple[int, str]]:
    """Lines of code (comments dropped; docstrings kept: they hold no comparison)."""
    return [(n, line.split("#", 1)[0]) for n, line in enumerate(text.splitlines(), 1)]


BACKEND_MODULES = {"transformers": "judge/transformers_backend.py", "vllm": "judge/vllm_backend.py",
                   "openai": "judge/openai_backend.py", "recognizer": "judge/recognizer.py"}


def name_comparisons(text: str, name: str) -> list[int]:
    """Lines that compare something with the backend name or test membership in a literal that holds it."""
    quoted = rf"""["']{re.escape(name)}["']"""
    patterns = [rf"[=!]=\s*{quoted}", rf"{quoted}\s*[=!]=", rf"\bin\s*[\(\[\{{][^\)\]\}}]*{quoted}",
                rf"\.get\(\s*{quoted}"]
    return [n for n, line in code_lines(text) if any(re.search(p, line) for p in patterns)]


def test_every_backend_has_its_own_module_listed_here():
    assert set(BACKEND_MODULES) == set(JUDGES)


@pytest.mark.parametrize("name", sorted(BACKEND_MODULES))
def test_no_backend_name_is_compared_outside_its_module_and_the_registry(name):
    found = {path: lines for path, text in sources(BACKEND_MODULES[name], "judge/__init__.py", "testing/").items()
             if (lines := name_comparisons(text, name))}
    assert found == {}, f"{name!r} compared by name in {found}"


def test_the_name_check_finds_a_comparison():
    assert name_comparisons('if config.judge == "vllm":\n    pass\n', "vllm") == [1]
    assert name_comparisons('if judge in ("openai", "recognizer"):', "recognizer") == [1]
    assert name_comparisons('REQUIRED = ("torch", "transformers")', "transformers") == []


# A statement in a string literal starts with its verb ("delete from ...", f"insert into main.[{table}] ...").
SQL_WRITE = re.compile(r"""["']\s*(insert|update|delete|replace|create|drop|alter)\s+(?:or\s+\w+\s+)?"""
                       r"""(into|from|table|index|\[|\w+\s+set\b)""", re.IGNORECASE)
SQLITE_UTILS_WRITE = re.compile(r"\]\.(insert|insert_all|upsert|upsert_all|update|delete|delete_where|create|"
                                r"add_column|create_index|drop)\(")


def sql_writes(text: str) -> list[int]:
    return [n for n, line in code_lines(text) if SQL_WRITE.search(line) or SQLITE_UTILS_WRITE.search(line)]


def test_sql_is_written_only_under_store():
    found = {path: lines for path, text in sources("store/").items() if (lines := sql_writes(text))}
    assert found == {}


def test_the_sql_check_finds_a_write():
    assert sql_writes('conn.execute("delete from main.judgments where id = ?")') == [1]
    assert sql_writes('db.execute(f"insert into main.[{table}] ({listed}) select 1")') == [1]
    assert sql_writes('self.db["runs"].update(run_id, {"status": status})') == [1]
    assert sql_writes('store.query("select * from judgments where status = \'ok\'")') == []
    assert sql_writes("the score's drop from the unperturbed input") == []
    assert sql_writes(PACKAGE.joinpath("store", "merge.py").read_text())  # merge does write, under store/


def test_executors_use_only_the_audits_public_methods():
    for name in ("pipeline/local.py", "pipeline/distributed.py"):
        private = [(n, line.strip()) for n, line in code_lines((PACKAGE / name).read_text())
                   if re.search(r"\b(audit|store|vision|self\.audit|self\.store)\._[a-z]", line)]
        assert private == [], f"{name} reaches into private attributes: {private}"


def test_the_product_never_imports_its_test_support():
    found = {path: [n for n, line in code_lines(text) if re.search(r"\btesting\b", line)
                    and re.search(r"\bimport\b", line)]
             for path, text in sources("testing/").items()}
    assert {path: lines for path, lines in found.items() if lines} == {}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


def test_importing_the_cli_does_not_load_torch():
    result = run_python("import localjudge.cli, sys; assert 'torch' not in sys.modules, 'torch loaded'")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, data_dir) -> Path:
    from .conftest import invoke

    folder = tmp_path_factory.mktemp("structure")
    manifest = seg_photos_manifest(data_dir, folder / "three.csv", 3)
    invoke("run", manifest, "--db", folder / "three.db")
    return folder / "three.db"


@pytest.mark.parametrize("command", [["matrix", "--json"], ["compare", "--json"], ["summary", "--json"],
                                     ["export", "--format", "jsonl"], ["report", "--json"]])
def test_read_only_commands_run_without_torch(command, small_store, tmp_path):
    """The read-only commands in a fresh process: they answer from the store and never load torch (the report's
    thumbnails are drawn with numpy, Pillow and OpenCV)."""
    extra = ["--out", str(tmp_path / "report")] if command[0] == "report" else []
    code = ("import sys\nfrom localjudge.cli import cli\n"
            f"try:\n    cli({command + ['--db', str(small_store)] + extra!r})\n"
            "except SystemExit as end:\n    assert not end.code, end.code\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
