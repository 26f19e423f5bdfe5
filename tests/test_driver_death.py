"""Driver death: when the process that opened the serve instance is SIGKILLed (no cleanup
runs), every replica process it started exits by itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import trio

REPLICAS = 3
START_TIMEOUT_S = 60.0
EXIT_DEADLINE_S = 5.0
POLL_INTERVAL_S = 0.05

DRIVER = textwrap.dedent(
    f"""
    import os

    import trio

    import trioserve as serve


    @serve.deployment(num_replicas={REPLICAS})
    class Pid:
        async def __call__(self) -> int:
            return os.getpid()


    async def main() -> None:
        async with serve.open_serve(http_port=None) as instance:
            await instance.run(Pid.bind(), name="orphans")
            status = await instance.status()
            replicas = status.applications["orphans"].deployments["Pid"].replicas
            print(" ".join(str(r.pid) for r in replicas), flush=True)
            await trio.sleep_forever()


    trio.run(main)
    """
)


def _gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(4096)
        assert chunk, f"the driver exited before printing its replicas: {data!r}"
        data += chunk
    return data.decode()


@pytest.mark.slow
async def test_driver_death_sigkill_replicas_exit_within_5s(tmp_path: Path) -> None:
    """SIGKILL the driver: every replica process (and any helper it started) is gone within
    5 seconds, without anyone stopping them."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = await trio.lowlevel.open_process(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    orphans: list[psutil.Process] = []
    try:
        assert driver.stdout is not None
        with trio.fail_after(START_TIMEOUT_S):
            line = await _read_line(driver.stdout)
        replica_pids = {int(pid) for pid in line.split()}
        assert len(replica_pids) == REPLICAS
        orphans = psutil.Process(driver.pid).children(recursive=True)
        assert replica_pids <= {p.pid for p in orphans}

        driver.send_signal(signal.SIGKILL)
        with trio.fail_after(EXIT_DEADLINE_S):
            await driver.wait()  # reap the driver
        deadline = trio.current_time() + EXIT_DEADLINE_S
        # an OS process that is not our child has no event to wait on: poll, bounded
        while not all(map(_gone, orphans)) and trio.current_time() < deadline:  # noqa: ASYNC110
            await trio.sleep(POLL_INTERVAL_S)
        left = [p.pid for p in orphans if not _gone(p)]
        assert left == [], f"still running {EXIT_DEADLINE_S}s after the driver died: {left}"
    finally:
        for proc in [*orphans]:  # only the processes this test started, by PID
            if not _gone(proc):
                proc.kill()
        if driver.returncode is None:
            driver.kill()
            await driver.wait()
        if driver.stdout is not None:
            await driver.stdout.aclose()
