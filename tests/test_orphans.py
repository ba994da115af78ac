"""Which Ray sessions the runner ends at its start: only marked ones whose runner is gone, and there only Ray's
processes. The end-to-end case (a SIGKILLed runner, then --resume) is test_reliability.py's SIGKILL test."""
import subprocess
import sys
from pathlib import Path

from sweeps import wait_for
from tune_looped.cluster import RUNNER_MARK, end_orphaned_sessions, mark_session, process_identity


def fake_ray_process(session_name: str) -> subprocess.Popen:
    """A process titled as Ray's agents are, naming the session on its command line."""
    sleeper = f"{sys.executable} -c 'import time; time.sleep(120)' {session_name}"
    process = subprocess.Popen(["bash", "-c", f"exec -a ray::FakeAgent {sleeper}"])
    wait_for(lambda: Path(f"/proc/{process.pid}/cmdline").read_bytes().startswith(b"ray::"), 10, 0.01)
    return process


def test_only_marked_sessions_of_a_gone_runner_are_ended(tmp_path):
    orphaned, live, unmarked = (tmp_path / f"session_2026-01-01_00-00-0{i}_000000_{i}" for i in range(3))
    for session in (orphaned, live, unmarked):
        session.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (orphaned / RUNNER_MARK).write_text(f"{gone.pid}:1")
    mark_session(live)  # this test process: a runner still running
    processes = {s.name: fake_ray_process(s.name) for s in (orphaned, live, unmarked)}
    not_ray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", orphaned.name])  # e.g. someone reading the session's logs
    try:
        assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 1
        assert processes[orphaned.name].wait(timeout=10) is not None
        assert all(process_identity(processes[s.name].pid) for s in (live, unmarked))
        assert process_identity(not_ray.pid)
        assert not (orphaned / RUNNER_MARK).exists() and (live / RUNNER_MARK).exists()
    finally:
        for process in (*processes.values(), not_ray):
            process.kill()
            process.wait()
