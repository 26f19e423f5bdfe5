"""Compare two revisions on the same workloads in one run:
``python bench/compare.py BASE [HEAD] [--only NAME[,NAME]] [--quick] [--rounds N]
[--windows N] [--ray-venv PATH]``.

Each revision is checked out in a temporary git worktree (``HEAD`` defaults to the working
tree as it is), this checkout's ``bench/`` scripts are copied into it, and it is measured from
there (its own directory current, itself first on ``PYTHONPATH``), so both sides run the same
workloads and only the packages differ. With ``--rounds N`` the revisions alternate N
times and each figure is the median of its rounds (each round's request figure is itself the
median of its windows, see ``bench_stats``). The table shows every figure both sides
measured, side by side, with HEAD / BASE; the reference workloads (raw, fastapi, ray), when
measured, are in it too and should come out near 1.00x: how far they move is the noise.

This is how the figures in ``bench/README.md`` ("What each optimisation bought") are made.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _measure(tree: Path, out: Path, only: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    argv = [sys.executable, str(tree / "bench" / "run.py"), "--out", str(out), *extra]
    if only:
        argv += ["--only", only]
    if quick:
        argv.append("--quick")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(argv, cwd=tree, env=env, check=False, stdout=subprocess.DEVNULL)
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _values(report: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """Every figure of a report as ``(workload, case, quantity) -> value``: for request
    figures the median over their windows (``value`` in results from before windows)."""
    found: dict[tuple[str, str, str], float] = {}
    for f in report["figures"]:
        key = (f["workload"], f["case"])
        if f["kind"] == "requests":
            for quantity, unit in (("throughput", "req/s"), ("p50", "ms"), ("p99", "ms")):
                value = f[quantity].get("median", f[quantity]["value"])
                if value is not None:
                    found[(*key, f"{quantity} {unit}")] = value
        else:
            found[(*key, f["value"]["unit"])] = f["value"]["value"]
    return found


def _median(rounds: list[dict[tuple[str, str, str], float]]) -> dict[tuple[str, str, str], float]:
    keys = set.intersection(*(set(r) for r in rounds))
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def table(base: str, head: str, a: dict[Any, float], b: dict[Any, float]) -> str:
    lines = [
        f"| Workload | Case | Figure | {base} | {head} | {head} / {base} |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key in sorted(set(a) & set(b)):
        workload, case, quantity = key
        ratio = f"{b[key] / a[key]:.2f}x" if a[key] else "-"
        lines.append(
            f"| {workload} | {case} | {quantity} | {_fmt(a[key])} | {_fmt(b[key])} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the revision to compare against")
    parser.add_argument("head", nargs="?", help="the revision to measure (default: working tree)")
    parser.add_argument("--only", default="", help="comma-separated workloads (see run.py)")
    parser.add_argument("--quick", action="store_true", help="short windows (smoke check)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the revisions N times")
    parser.add_argument("--windows", type=int, metavar="N", help="passed to run.py")
    parser.add_argument("--ray-venv", metavar="PATH", help="passed to run.py")
    args = parser.parse_args(argv)
    extra = ["--windows", str(args.windows)] if args.windows else []
    extra += ["--ray-venv", args.ray_venv] if args.ray_venv else []
    sides = [args.base, args.head]
    labels = [args.base, args.head or "working tree"]
    results: list[list[dict[Any, float]]] = [[], []]
    with tempfile.TemporaryDirectory(prefix="trioserve-compare-") as tmp:
        trees: list[Path] = []
        try:
            for rev in sides:
                if rev is None:
                    trees.append(ROOT)
                    continue
                tree = Path(tmp) / _git("rev-parse", "--short", rev)
                _git("worktree", "add", "--detach", str(tree), rev)
                trees.append(tree)
                for script in HERE.glob("*.py"):
                    shutil.copy2(script, tree / "bench" / script.name)
            for round_ in range(args.rounds):
                for i, tree in enumerate(trees):
                    print(f"[compare] round {round_ + 1}: {labels[i]}", flush=True)
                    out = Path(tmp) / f"side{i}-round{round_}.json"
                    results[i].append(_values(_measure(tree, out, args.only, args.quick, extra)))
        finally:
            for tree in trees:
                if tree != ROOT:
                    _git("worktree", "remove", "--force", str(tree))
    print()
    print(table(labels[0], labels[1], _median(results[0]), _median(results[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
