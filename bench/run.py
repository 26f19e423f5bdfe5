"""Run the trioserve benchmark suite: ``python bench/run.py [--quick] [--only NAME[,NAME]]
[--windows N] [--ray-venv PATH]``.

Each workload runs in a worker process of its own (this script, ``--worker NAME``), bounded
by a timeout; a workload that crashes or hangs is reported as failed (its processes are
ended by PID) and the others still run. Every request figure is measured in several windows
(``--windows``, default 5) and reported as the median with the min-max of its windows,
beside the reference figures measured in the same run (the raw websocket echo, FastAPI on
uvicorn, Ray Serve from ``--ray-venv``), each skipped with a note when its dependency is
missing. A full run writes ``bench/results/<YYYY-MM-DD>.json`` and
``bench/results/latest.md`` and prints the table; a ``--quick`` run writes
``<YYYY-MM-DD>-quick.json`` and ``latest-quick.md`` there instead (git-ignored); ``--only``
runs print the table and write files only with ``--out``.

See ``bench/README.md`` for what each workload measures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from bench_workloads import (  # noqa: E402 (after the path set-up above)
    WORKLOADS,
    Settings,
    run_worker,
    worker_timeout_s,
)

PACKAGES = ["trio", "trio-websocket", "msgspec", "h11", "cloudpickle", "httpx", "psutil"]
#: the FastAPI reference's packages (recorded when installed)
DASH = "\u2013"  # the en dash of "median (min\u2013max)"
REFERENCE_PACKAGES = ["fastapi", "uvicorn", "uvloop", "httptools"]


# -- machine and run information


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    import psutil

    versions = {}
    for name in PACKAGES + REFERENCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    # the results themselves do not make a run dirty: only changes to what is measured do
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    wrk = _which_version_wrk()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "memory_total": {"value": round(psutil.virtual_memory().total / 2**30, 1), "unit": "GiB"},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "wrk": wrk,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def _which_version_wrk() -> str | None:
    import shutil

    path = shutil.which("wrk")
    if path is None:
        return None
    try:
        done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return path
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else path


# -- running workers


def _end_tree(pid: int) -> list[int]:
    """End a timed-out worker and everything it started, by PID; returns the PIDs ended."""
    import psutil

    try:
        worker = psutil.Process(pid)
        procs = [*worker.children(recursive=True), worker]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def run_workload(
    name: str, quick: bool, settings: Settings, timeout: float | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one workload's worker process; returns its status record and its JSON lines."""
    workload = WORKLOADS[name]
    if timeout is None:
        timeout = worker_timeout_s(workload, settings)
    with tempfile.TemporaryDirectory(prefix=f"trioserve-bench-{name}-") as tmp:
        result_file = Path(tmp) / "results.jsonl"
        log_file = Path(tmp) / "worker.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
        argv += ["--result-file", str(result_file)]
        if quick:
            argv.append("--quick")
        argv += settings.argv()
        started = time.perf_counter()
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            timed_out = False
            ended: list[int] = []
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                ended = _end_tree(proc.pid)
                proc.wait()
        wall = time.perf_counter() - started
        records = []
        if result_file.exists():
            for line in result_file.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
        log_tail = log_file.read_text(errors="replace").strip().splitlines()[-15:]
    status: dict[str, Any] = {
        "title": workload.title,
        "reference": workload.reference,
        "wall_s": round(wall, 2),
    }
    errors = [r for r in records if r["type"] == "error"]
    if timed_out:
        status["status"] = "failed"
        status["error"] = f"worker timed out after {timeout:.0f}s; ended PIDs {ended}"
    elif proc.returncode != 0:
        status["status"] = "failed"
        status["error"] = f"worker exited with code {proc.returncode}"
    elif errors:
        status["status"] = "partial"
    else:
        status["status"] = "ok"
    if status["status"] != "ok":
        status["log_tail"] = log_tail
    return status, records


# -- tables


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}" if value >= 1 else f"{value:.3f}"


def _median(quantity: dict[str, Any] | None) -> float | None:
    """The median of a figure's quantity (``value`` in results from before windows)."""
    if not quantity:
        return None
    value = quantity.get("median", quantity.get("value"))
    return None if value is None else float(value)


def _spread(quantity: dict[str, Any] | None) -> str:
    """``median (min-max)`` (an en dash), or the median alone when there is one window."""
    median = _median(quantity)
    if quantity is None or median is None:
        return "-"
    lo, hi = quantity.get("min"), quantity.get("max")
    if lo is None or hi is None or lo == hi:
        return _fmt(median)
    return f"{_fmt(median)} ({_fmt(lo)}{DASH}{_fmt(hi)})"


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def attach_ratios(report: dict[str, Any]) -> None:
    """For every figure with references: the ratios of its medians to each reference's
    medians (same run), in ``vs``; references that were not measured are left out."""
    figures = report["figures"]
    found = {
        (f["workload"], f["case"]): f
        for f in figures
        if f["kind"] == "requests" and report["workloads"][f["workload"]].get("reference")
    }
    for f in figures:
        if f["kind"] != "requests":
            continue
        f["vs"] = []
        for ref in f.get("references") or []:
            base = found.get((ref["workload"], ref["case"]))
            if base is None:
                continue
            f["vs"].append(
                {
                    "workload": ref["workload"],
                    "case": ref["case"],
                    **{
                        q: _round(_ratio(_median(f[q]), _median(base[q])))
                        for q in ("throughput", "p50", "p99")
                    },
                    "unit": "x reference, of the medians (throughput: higher is better; "
                    "latency: lower is better)",
                }
            )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _lat(f: dict[str, Any]) -> str:
    return f"{_fmt(_median(f['p50']))} / {_fmt(_median(f['p99']))}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    workloads = report["workloads"]
    lines = [
        f"# trioserve benchmarks, {report['date']} ({report['mode']} run)",
        "",
        f"- Machine: {m['cpu_count']} CPUs ({m['usable_cpus']} usable), "
        f"{m['memory_total']['value']} GiB, {m['platform']}; "
        f"load average at start {m['load_average_at_start']}, "
        f"at end {report['load_average_at_end']}",
        f"- Python {m['python_version']} ({m['python_implementation']}); "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
        + f"; wrk: {m['wrk'] or 'not installed'}",
        f"- Commit {m['git_commit'] or '?'}{' (dirty)' if m['git_dirty'] else ''}",
        f"- Closed loop: N tasks back to back, {s['warmup_s']} s warmup then "
        f"{s['windows']} consecutive windows of {s['window_s']} s (wrk: {s['windows']} runs "
        f"of {s['wrk_window_s']} s); one process replica, max_ongoing_requests=1000 unless "
        f"stated.",
        f"- Every figure is the median over its windows, with the min{DASH}max of the "
        "windows' "
        "req/s in brackets; p50 and p99 are the medians of the windows' p50 and p99. "
        "Ratios are trioserve / reference of the medians, both measured in this run: "
        "req/s above 1 is faster than the reference, latency above 1 slower.",
        "",
        "## trioserve against the references",
        "",
        "| Workload | Case | req/s | p50 / p99 ms | Reference | ref req/s | ref p50 / p99 ms "
        "| req/s ratio | p50 ratio | p99 ratio |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    figures = report["figures"]
    by_key = {(f["workload"], f["case"]): f for f in figures if f["kind"] == "requests"}
    for f in figures:
        if f["kind"] != "requests" or workloads[f["workload"]].get("reference"):
            continue
        head = (
            f"| {workloads[f['workload']]['title']} | {f['case']} | "
            f"{_spread(f['throughput'])} | {_lat(f)} | "
        )
        vs = f.get("vs") or []
        if not vs:
            lines.append(head + "- | - | - | - | - | - |")
        for v in vs:
            base = by_key[(v["workload"], v["case"])]
            lines.append(
                head + f"{workloads[v['workload']]['title']} {v['case']} | "
                f"{_spread(base['throughput'])} | {_lat(base)} | "
                f"{_x(v['throughput'])} | {_x(v['p50'])} | {_x(v['p99'])} |"
            )
    refs = [
        f for f in figures if f["kind"] == "requests" and workloads[f["workload"]].get("reference")
    ]
    if refs:
        lines += [
            "",
            "## References (same run)",
            "",
            "| Reference | Case | req/s | p50 ms | p99 ms |",
            "|---|---|---:|---:|---:|",
        ]
        for f in refs:
            lines.append(
                f"| {workloads[f['workload']]['title']} | {f['case']} | "
                f"{_spread(f['throughput'])} | {_spread(f['p50'])} | {_spread(f['p99'])} |"
            )
    scalars = [f for f in figures if f["kind"] == "scalar"]
    if scalars:
        lines += [
            "",
            "## Lifecycle and scale",
            "",
            "| Workload | Figure | Value |",
            "|---|---|---:|",
        ]
        for f in scalars:
            title = workloads[f["workload"]]["title"]
            v = f["value"]
            lines.append(f"| {title} | {f['case']} | {_fmt(v['value'])} {v['unit']} |")
    many = _compare_replicas(figures)
    if many:
        lines += ["", many]
    problems = []
    for name, w in workloads.items():
        if w["status"] != "ok":
            problems.append(
                f"- **{name}: {w['status']}**" + (f": {w['error']}" if "error" in w else "")
            )
    for r in report["errors"]:
        problems.append(f"- {r['workload']} / {r['case']}: {r['error']}")
    for r in report["notes"]:
        problems.append(f"- {r['workload']}: {r['text']}")
    if problems:
        lines += ["", "## Failures, skips and notes", "", *problems]
    return "\n".join(lines) + "\n"


def _compare_replicas(figures: list[dict[str, Any]]) -> str:
    rows = [f for f in figures if f["workload"] == "replicas" and f["kind"] == "requests"]
    if len(rows) != 2:
        return ""
    one, many = rows
    ratio = _ratio(_median(many["throughput"]), _median(one["throughput"]))
    return (
        f"Many replicas: c64 throughput with {many['case'].split(', ')[1]} is "
        f"{_x(ratio)} the throughput with 1 replica (medians; same run, same instance)."
    )


# -- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations (smoke check)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated workloads among: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--windows",
        type=int,
        metavar="N",
        help="windows per request figure (default 5; 3 with --quick)",
    )
    parser.add_argument(
        "--window-s",
        type=float,
        metavar="SECONDS",
        help="length of each window (default 2; 0.5 with --quick)",
    )
    parser.add_argument(
        "--ray-venv",
        metavar="PATH",
        help="a virtualenv with ray[serve]: measure Ray Serve as a reference (skipped without)",
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--out", type=Path, help="write the JSON here (and a .md next to it)")
    parser.add_argument(
        "--worker-timeout",
        type=float,
        metavar="SECONDS",
        help="bound on each workload's worker process (default: from the workload's size)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.windows is not None and args.windows < 1:
        print("--windows must be at least 1", file=sys.stderr)
        return 2
    settings = Settings.make(args.quick, args.windows, args.window_s, args.ray_venv)
    if args.worker:
        return run_worker(args.worker, args.result_file, settings)
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:10} {w.title}")
        return 0
    selected = [n.strip() for n in args.only.split(",") if n.strip()] or list(WORKLOADS)
    unknown = [n for n in selected if n not in WORKLOADS]
    if unknown:
        print(f"unknown workloads: {unknown}; choose among {list(WORKLOADS)}", file=sys.stderr)
        return 2
    mode = ("quick" if args.quick else "full") + (" partial" if args.only else "")
    now = datetime.datetime.now().astimezone()
    report: dict[str, Any] = {
        "date": now.date().isoformat(),
        "started_at": now.isoformat(timespec="seconds"),
        "mode": mode,
        "argv": sys.argv[1:],
        "machine": machine_info(),
        "settings": {
            "warmup_s": settings.warmup_s,
            "window_s": settings.window_s,
            "windows": settings.windows,
            "wrk_window_s": settings.wrk_window_s,
            "ray_venv": settings.ray_venv,
            "many_replicas": settings.many_replicas,
            "lifecycle_reps": settings.lifecycle_reps,
            "max_ongoing_requests": 1000,
        },
        "workloads": {},
        "figures": [],
        "errors": [],
        "notes": [],
    }
    started = time.perf_counter()
    for name in selected:
        print(f"[bench] {name}: {WORKLOADS[name].title} ...", flush=True)
        status, records = run_workload(name, args.quick, settings, args.worker_timeout)
        report["workloads"][name] = status
        for r in records:
            kind = r.pop("type")
            if kind == "figure":
                r.setdefault("kind", "requests")
                report["figures"].append(r)
            elif kind == "error":
                report["errors"].append(r)
            elif kind == "note":
                report["notes"].append(r)
            elif kind == "skipped":
                report["notes"].append(
                    {"workload": r["workload"], "text": f"{r['case']} skipped: {r['reason']}"}
                )
        line = f"[bench] {name}: {status['status']} in {status['wall_s']:.1f}s"
        if "error" in status:
            line += f" ({status['error']})"
        print(line, flush=True)
        for tail in status.get("log_tail", []):
            print(f"    | {tail}", flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    attach_ratios(report)
    table = markdown(report)
    print()
    print(table)
    out: Path | None = args.out
    md: Path | None = None if out is None else out.with_suffix(".md")
    if out is None and not args.only:
        # a quick run has files of its own, so it never replaces a full run's
        suffix = "-quick" if args.quick else ""
        out = RESULTS / f"{report['date']}{suffix}.json"
        md = RESULTS / f"latest{suffix}.md"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"[bench] wrote {out}")
        assert md is not None
        md.write_text(table)
        print(f"[bench] wrote {md}")
    print(f"[bench] total {report['wall_s']:.1f}s")
    # a reference that fails is reported, but only trioserve's own failures fail the run
    failed = [
        n for n, w in report["workloads"].items() if w["status"] == "failed" and not w["reference"]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
