"""Run the trioserve benchmark suite: ``python bench/run.py [--quick] [--only NAME[,NAME]]``.

Each workload runs in a worker process of its own (this script, ``--worker NAME``), bounded
by a timeout; a workload that crashes or hangs is reported as failed (its processes are
ended by PID) and the others still run. A full run writes
``bench/results/<YYYY-MM-DD>.json`` and ``bench/results/latest.md`` and prints the table;
``--quick`` and ``--only`` runs print the table and write files only with ``--out``.

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
    for name in PACKAGES:
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
    name: str, quick: bool, timeout: float | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one workload's worker process; returns its status record and its JSON lines."""
    workload = WORKLOADS[name]
    if timeout is None:
        timeout = worker_timeout_s(workload, Settings.make(quick))
    with tempfile.TemporaryDirectory(prefix=f"trioserve-bench-{name}-") as tmp:
        result_file = Path(tmp) / "results.jsonl"
        log_file = Path(tmp) / "worker.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
        argv += ["--result-file", str(result_file)]
        if quick:
            argv.append("--quick")
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
    status: dict[str, Any] = {"title": workload.title, "wall_s": round(wall, 2)}
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


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def attach_ratios(figures: list[dict[str, Any]]) -> None:
    raw = {f["case"]: f for f in figures if f["workload"] == "raw" and f["kind"] == "requests"}
    for f in figures:
        if f["kind"] != "requests" or f["workload"] == "raw":
            continue
        base = raw.get(f.get("raw_case") or "")
        if base is None:
            f["vs_raw"] = None
            continue
        f["vs_raw"] = {
            "raw_case": base["case"],
            "throughput": _round(_ratio(f["throughput"]["value"], base["throughput"]["value"])),
            "p50": _round(_ratio(f["p50"]["value"], base["p50"]["value"])),
            "p99": _round(_ratio(f["p99"]["value"], base["p99"]["value"])),
            "unit": "x raw (throughput: higher is better; latency: lower is better)",
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
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
        f"- Closed loop: N tasks back to back, {s['warmup_s']} s warmup then a "
        f"{s['duration_s']} s window; one process replica, max_ongoing_requests=1000 "
        f"unless stated. Ratios are to the raw baseline at the same concurrency "
        f"(and payload).",
        "",
        "## Requests",
        "",
        "| Workload | Case | req/s | p50 ms | p99 ms | req/s vs raw | p50 vs raw | p99 vs raw |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    figures = report["figures"]
    for f in figures:
        if f["kind"] != "requests":
            continue
        vs = f.get("vs_raw") or {}
        title = report["workloads"][f["workload"]]["title"]
        lines.append(
            f"| {title} | {f['case']} | {_fmt(f['throughput']['value'])} | "
            f"{_fmt(f['p50']['value'])} | {_fmt(f['p99']['value'])} | "
            f"{_x(vs.get('throughput'))} | {_x(vs.get('p50'))} | {_x(vs.get('p99'))} |"
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
            title = report["workloads"][f["workload"]]["title"]
            v = f["value"]
            lines.append(f"| {title} | {f['case']} | {_fmt(v['value'])} {v['unit']} |")
    many = _compare_replicas(figures)
    if many:
        lines += ["", many]
    problems = []
    for name, w in report["workloads"].items():
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
    ratio = _ratio(many["throughput"]["value"], one["throughput"]["value"])
    return (
        f"Many replicas: c64 throughput with {many['case'].split(', ')[1]} is "
        f"{_x(ratio)} the throughput with 1 replica (same run, same instance)."
    )


# -- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations (smoke check)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated workloads among: {', '.join(WORKLOADS)}"
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
    if args.worker:
        return run_worker(args.worker, args.result_file, args.quick)
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:10} {w.title}")
        return 0
    selected = [n.strip() for n in args.only.split(",") if n.strip()] or list(WORKLOADS)
    unknown = [n for n in selected if n not in WORKLOADS]
    if unknown:
        print(f"unknown workloads: {unknown}; choose among {list(WORKLOADS)}", file=sys.stderr)
        return 2
    partial = bool(args.only) or args.quick
    mode = ("quick" if args.quick else "full") + (" partial" if args.only else "")
    settings = Settings.make(args.quick)
    now = datetime.datetime.now().astimezone()
    report: dict[str, Any] = {
        "date": now.date().isoformat(),
        "started_at": now.isoformat(timespec="seconds"),
        "mode": mode,
        "argv": sys.argv[1:],
        "machine": machine_info(),
        "settings": {
            "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s,
            "wrk_duration_s": settings.wrk_duration_s,
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
        status, records = run_workload(name, args.quick, args.worker_timeout)
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
    attach_ratios(report["figures"])
    table = markdown(report)
    print()
    print(table)
    out: Path | None = args.out
    if out is None and not partial:
        out = RESULTS / f"{report['date']}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"[bench] wrote {out}")
        md = RESULTS / "latest.md" if args.out is None else out.with_suffix(".md")
        md.write_text(table)
        print(f"[bench] wrote {md}")
    print(f"[bench] total {report['wall_s']:.1f}s")
    failed = [n for n, w in report["workloads"].items() if w["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
