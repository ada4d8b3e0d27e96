"""Mutation testing of the router's core, run by hand (``make mutation``), not in CI.

mutmut changes one thing at a time in the modules under test (``<`` for ``<=``, ``None`` for a value, a
``break`` for a ``continue`` ...) and runs the tests that reach the changed function; a mutant no test
notices "survives": behaviour the suite does not pin. This script runs mutmut on a copy of the working
tree (``build/mutation/``: the tree itself is never mutated), then prints the score per module and the
diff of every survivor. Survivors listed in ``tools/mutation-accepted.toml`` (equivalent mutants, or ones
accepted with a reason) are marked as such but still count against the score.

    .venv/bin/python tools/mutation.py --modules 'router/policy/*.py router/features.py' \\
        --tests 'tests/test_engine.py tests/test_policy_*.py'
    .venv/bin/python tools/mutation.py --report-only    # the last run's results again
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / "build" / "mutation"
ACCEPTED = ROOT / "tools" / "mutation-accepted.toml"
# log calls are for people reading logs, not behaviour the tests pin
SKIP_LINES = [r"^\s*log\.(debug|info|warning|error|exception)\("]
# mutmut's exit codes, as its stats module reads them
STATUS = {1: "killed", 3: "killed", 37: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}
DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({name: get_diff_for_mutant(name) for name in sys.argv[1:]}))
"""


@dataclass(frozen=True)
class Accepted:
    module: str
    was: str
    now: str
    why: str


def expand(patterns: str) -> list[str]:
    """Files matching space-separated globs, relative to the repo; patterns matching nothing are skipped."""
    found: list[str] = []
    for pattern in patterns.split():
        for path in sorted(glob.glob(pattern, root_dir=ROOT)):
            if path.endswith(".py") and path not in found:
                found.append(path)
    return found


def prepare(modules: list[str], tests: list[str]) -> None:
    """A fresh copy of the tree (tracked files and new, unignored ones) with mutmut configured for it."""
    shutil.rmtree(WORKDIR, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            dst = WORKDIR / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    config = {
        "source_paths": ["router/"],
        "only_mutate": modules,
        "also_copy": ["policies/", "tests/"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "pytest_add_cli_args_test_selection": tests,
        "do_not_mutate_patterns": SKIP_LINES,
    }
    with (WORKDIR / "pyproject.toml").open("a") as f:
        f.write("\n[tool.mutmut]\n")
        for key, value in config.items():
            f.write(f"{key} = {json.dumps(value)}\n")


def run(children: int) -> int:
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(mutmut), "run", "--max-children", str(children)], cwd=WORKDIR, env=env).returncode


def load_accepted() -> list[Accepted]:
    if not ACCEPTED.exists():
        return []
    doc = tomllib.loads(ACCEPTED.read_text())
    return [Accepted(a["module"], a["was"].strip(), a["now"].strip(), a["why"]) for a in doc.get("accepted", [])]


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and added lines of a mutant's diff, each joined and stripped."""
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    was = " ".join(line[1:].strip() for line in body if line.startswith("-"))
    now = " ".join(line[1:].strip() for line in body if line.startswith("+"))
    return was, now


def report(strict: bool) -> int:
    """Scores per module, then every survivor's diff; with ``strict``, 1 when an unexplained survivor is left."""
    metas = sorted((WORKDIR / "mutants").rglob("*.py.meta"))
    if not metas:
        print(f"no results under {WORKDIR}/mutants: run without --report-only first", file=sys.stderr)
        return 2
    by_module: dict[str, dict[str, str]] = {}
    for meta in metas:
        module = str(meta.relative_to(WORKDIR / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if codes:
            by_module[module] = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
    survivors = [n for statuses in by_module.values() for n, s in statuses.items() if s in ("survived", "no tests")]
    diffs: dict[str, str] = {}
    if survivors:
        out = subprocess.run([str(Path(sys.executable)), "-c", DIFFS, *survivors], cwd=WORKDIR,
                             capture_output=True, text=True, check=True)
        diffs = json.loads(out.stdout)
    accepted = load_accepted()

    def why(module: str, name: str) -> str | None:
        was, now = changed_lines(diffs.get(name, ""))
        return next((a.why for a in accepted if a.module == module and a.was == was and a.now == now), None)

    print(f"{'module':34} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} "
          f"{'accepted':>8} {'score':>6}")
    totals: Counter[str] = Counter()
    unexplained = 0
    for module, statuses in by_module.items():
        counts = Counter(statuses.values())
        known = sum(1 for n, s in statuses.items() if s in ("survived", "no tests") and why(module, n))
        checked = len(statuses) - counts["skipped"] - counts["not checked"]
        caught = counts["killed"] + counts["timeout"]
        totals.update(counts)
        totals["mutants"] += len(statuses)
        totals["checked"] += checked
        totals["accepted"] += known
        score = f"{100.0 * caught / checked:.1f}%" if checked else "-"
        print(f"{module:34} {len(statuses):7} {counts['killed']:6} {counts['timeout']:7} {counts['survived']:8} "
              f"{counts['no tests']:8} {known:8} {score:>6}")
        unexplained += counts["survived"] + counts["no tests"] - known
    caught = totals["killed"] + totals["timeout"]
    score = f"{100.0 * caught / totals['checked']:.1f}%" if totals["checked"] else "-"
    print(f"{'all':34} {totals['mutants']:7} {totals['killed']:6} {totals['timeout']:7} {totals['survived']:8} "
          f"{totals['no tests']:8} {totals['accepted']:8} {score:>6}")
    for module, statuses in by_module.items():
        for name, status in statuses.items():
            if status not in ("survived", "no tests"):
                continue
            reason = why(module, name)
            label = f"accepted: {reason}" if reason else status.upper()
            print(f"\n# {name} [{label}]\n{diffs.get(name, '(no diff)')}")
    print(f"\n{unexplained} survivors are neither killed nor accepted (tools/mutation-accepted.toml)")
    return 1 if strict and unexplained else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default="router/policy/*.py router/features.py",
                        help="space-separated globs of the modules to mutate")
    parser.add_argument("--tests", default="tests/test_engine.py tests/test_features.py tests/test_policy_*.py",
                        help="space-separated globs of the test files mutmut may run")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2, help="mutants tested at once")
    parser.add_argument("--report-only", action="store_true", help="report the last run without running again")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a survivor is neither killed nor accepted")
    args = parser.parse_args(argv)
    if not args.report_only:
        modules, tests = expand(args.modules), expand(args.tests)
        if not modules or not tests:
            parser.error(f"nothing to do: modules {modules}, tests {tests}")
        print(f"mutating {len(modules)} modules, running {len(tests)} test files, in {WORKDIR}", flush=True)
        prepare(modules, tests)
        code = run(args.children)
        if code != 0:
            print(f"mutmut run exited {code}", file=sys.stderr)
            return code
    return report(args.strict)


if __name__ == "__main__":
    sys.exit(main())
