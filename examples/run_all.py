"""Run every example in this directory, one subprocess each; exit non-zero if any fails.

The nox session ``examples`` runs this: ``python examples/run_all.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

TIMEOUT_S = 120


def example_paths() -> list[Path]:
    here = Path(__file__).resolve()
    return sorted(p for p in here.parent.glob("*.py") if p != here)


def main() -> int:
    failed: list[str] = []
    for path in example_paths():
        print(f"--- {path.name}", flush=True)
        started = time.perf_counter()
        try:
            subprocess.run([sys.executable, str(path)], timeout=TIMEOUT_S, check=True)
        except subprocess.CalledProcessError as exc:
            failed.append(path.name)
            outcome = f"FAILED (exit code {exc.returncode})"
        except subprocess.TimeoutExpired:
            failed.append(path.name)
            outcome = f"FAILED (no exit within {TIMEOUT_S}s)"
        else:
            outcome = "ok"
        print(f"--- {path.name}: {outcome} in {time.perf_counter() - started:.1f}s", flush=True)
    if failed:
        print(f"{len(failed)} example(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all examples ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
