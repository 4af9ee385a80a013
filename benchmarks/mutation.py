"""Mutation testing of the decision logic: how much of it the fast tests pin.

Run from the repository root, with the project's virtual environment::

    .venv/bin/python -m benchmarks.mutation [--modules policy,machine,classify]
        [--jobs 2] [--install] [--keep] [--json]

`mutmut <https://mutmut.readthedocs.io>`_ (3.x) changes one small thing at a
time in ``fwdmilter/policy.py``, ``fwdmilter/machine.py`` and
``fwdmilter/classify.py`` (an operator, a constant, a condition, a returned
value...) and runs the tests that reach the changed function. A *mutant* is
*killed* when a test fails, and *survives* when every test still passes: the
tests do not notice that change of behaviour (or it is equivalent: it
changes nothing a caller can see).

The test command is the suite's two fast layers only, ``tests/unit`` and
``tests/milter`` (pure decisions, and the milter shell in-process through
pymilter's ``TestCtx``): they run in seconds. The end-to-end tests (real
Postfix, Sendmail, Redis) are never run here.

mutmut works in a ``mutants/`` folder beside the code it mutates. So that the
run leaves nothing in the work tree, this script copies the checkout (the
files git tracks or would track, as they are in the work tree, uncommitted
changes included) into a temporary folder, writes mutmut's settings into
*that copy's* ``pyproject.toml``, and runs mutmut there; the folder is
removed at the end unless ``--keep``. The repository's own ``pyproject.toml``
has no ``[tool.mutmut]`` section.

It prints, per module, killed / total and every survivor with its diff (or,
with ``--json``, the same as JSON); mutmut's progress goes to stderr. Exit
status 0 when the run completed (whatever the score), 2 when mutmut is
missing or failed.

This is not run in CI: a run takes about ten minutes on two cores (some
1,200 mutants, each tested in a forked process), and its figures are
recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("policy", "machine", "classify")
TEST_LAYERS = ("tests/unit", "tests/milter")
#: mutmut's exit codes for a mutant (mutmut/stats.py): 1 and 3 are a test
#: failure, 0 every test passed. Anything else (timeout, no test reached
#: the mutant, segfault) is counted apart.
KILLED = {1, 3}
SURVIVED = {0}
MUTMUT_REQUIREMENT = "mutmut >= 3.8, < 4"


@dataclass
class ModuleScore:
    module: str
    killed: int = 0
    survived: list[str] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)  # mutant -> exit code

    @property
    def total(self) -> int:
        return self.killed + len(self.survived) + len(self.other)

    @property
    def score(self) -> float:
        return self.killed / self.total if self.total else 0.0


def _tracked_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def _copy_checkout(root: Path, dest: Path) -> None:
    for rel in _tracked_files(root):
        src = root / rel
        if not src.is_file():  # deleted in the work tree, not yet in git
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _write_settings(copy: Path, modules: list[str]) -> None:
    """mutmut's settings, in the copy's pyproject.toml only."""
    settings = {
        # The whole package goes to mutants/ (its other modules unchanged),
        # so that the mutated modules import their neighbours from there.
        "source_paths": ["fwdmilter"],
        "only_mutate": [f"fwdmilter/{m}.py" for m in modules],
        # Everything else too: some tests read docs/, systemd/ or scripts/.
        "also_copy": sorted(p.name for p in copy.iterdir() if p.name != "fwdmilter"),
        "pytest_add_cli_args_test_selection": list(TEST_LAYERS),
        # No .pytest_cache in the copy's tests; the copy is not a git checkout.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
    }
    lines = ["", "[tool.mutmut]"]
    lines += [f"{key} = {_toml_list(value)}" for key, value in settings.items()]
    lines += ["use_git_change_detection = false", ""]
    with (copy / "pyproject.toml").open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _mutmut(copy: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The copy's code, not the editable install's: mutmut puts mutants/
    # first on sys.path itself; PYTHONPATH makes `import tests...` work.
    env["PYTHONPATH"] = str(copy)
    env.pop("PYTHONSAFEPATH", None)
    if capture:
        return subprocess.run(
            [sys.executable, "-m", "mutmut", *args],
            cwd=copy,
            env=env,
            check=False,
            text=True,
            capture_output=True,
        )
    # mutmut's progress goes to stderr: stdout is for the report (or JSON).
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=copy,
        env=env,
        check=False,
        text=True,
        stdout=sys.stderr,
    )


def _scores(copy: Path, modules: list[str]) -> list[ModuleScore]:
    scores = []
    for module in modules:
        meta = copy / "mutants" / "fwdmilter" / f"{module}.py.meta"
        data = json.loads(meta.read_text(encoding="utf-8"))
        score = ModuleScore(module)
        for name, code in sorted(data["exit_code_by_key"].items(), key=lambda kv: _order(kv[0])):
            if code in KILLED:
                score.killed += 1
            elif code in SURVIVED:
                score.survived.append(name)
            else:
                score.other[name] = code
        scores.append(score)
    return scores


def _order(name: str) -> tuple[str, int]:
    """Mutants in source order within a function: ``..__mutmut_12`` after ``_2``."""
    base, _, n = name.rpartition("__mutmut_")
    return (base, int(n) if n.isdigit() else 0)


#: Run in the copy by one interpreter for all survivors (a ``mutmut show``
#: per mutant costs a second of start-up each): names on stdin, a JSON
#: object name -> diff on stdout.
_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for line in sys.stdin:
    name, path = line.split()
    out[name] = get_diff_for_mutant(name, path=path)
print(json.dumps(out))
"""


def _diffs(copy: Path, scores: list[ModuleScore]) -> dict[str, str]:
    wanted = [(n, f"fwdmilter/{s.module}.py") for s in scores for n in s.survived]
    if not wanted:
        return {}
    env = dict(os.environ, PYTHONPATH=str(copy))
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=copy,
        env=env,
        input="".join(f"{n} {p}\n" for n, p in wanted),
        text=True,
        capture_output=True,
        check=False,
    )
    if done.returncode == 0:
        diffs: dict[str, str] = json.loads(done.stdout)
        return diffs
    # mutmut's internals moved: its command line still shows each one.
    print(done.stderr, file=sys.stderr)
    diffs = {}
    for name, _ in wanted:
        shown = _mutmut(copy, "show", name, capture=True).stdout.splitlines()
        diffs[name] = "\n".join(shown[1:])  # the first line repeats name and status
    return diffs


def _ensure_mutmut(install: bool) -> bool:
    if importlib.util.find_spec("mutmut") is not None:
        return True
    if not install:
        print(
            f"mutmut is not installed in {sys.prefix}: run\n"
            f"    {sys.executable} -m pip install '{MUTMUT_REQUIREMENT}'\n"
            "or pass --install",
            file=sys.stderr,
        )
        return False
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", MUTMUT_REQUIREMENT], check=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modules",
        default=",".join(MODULES),
        help="fwdmilter modules to mutate, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once"
    )
    parser.add_argument(
        "--install", action="store_true", help=f"pip install {MUTMUT_REQUIREMENT!r} if missing"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if not (ROOT / "fwdmilter" / f"{m}.py").is_file()]
    if unknown:
        parser.error(f"no such module: {', '.join(unknown)}")
    if not _ensure_mutmut(args.install):
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="fwdmilter-mutation-"))
    try:
        copy = tmp / "src"
        _copy_checkout(ROOT, copy)
        _write_settings(copy, modules)
        print(f"mutating {', '.join(modules)} in {copy}", file=sys.stderr)
        started = time.monotonic()
        run = _mutmut(copy, "run", "--max-children", str(max(1, args.jobs)))
        elapsed = time.monotonic() - started
        if run.returncode != 0:
            print(f"mutmut run failed (exit status {run.returncode})", file=sys.stderr)
            return 2
        scores = _scores(copy, modules)
        diffs = _diffs(copy, scores)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        out = {
            "seconds": round(elapsed, 1),
            "modules": {
                s.module: {
                    "killed": s.killed,
                    "total": s.total,
                    "score": round(s.score, 4),
                    "survived": {n: diffs[n] for n in s.survived},
                    "other": s.other,
                }
                for s in scores
            },
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"\nmutation run of {', '.join(TEST_LAYERS)}: {elapsed:.0f} s\n")
    print(f"{'module':<22} {'killed':>7} {'total':>6} {'score':>7} {'survived':>9} {'other':>6}")
    for s in scores:
        print(
            f"fwdmilter/{s.module + '.py':<12} {s.killed:>7} {s.total:>6} "
            f"{s.score:>7.1%} {len(s.survived):>9} {len(s.other):>6}"
        )
    for s in scores:
        for name, code in s.other.items():
            print(f"\n## {name}: not killed, not survived (mutmut exit code {code})")
        for name in s.survived:
            print(f"\n## {name}: survived\n{diffs[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
