"""Which Ray sessions the runner ends at its start: only marked ones whose runner is gone, and there only Ray's
processes; the port its Ray's dashboard agent takes; and the CPU count the runner and the evaluation size themselves
by. The end-to-end case (a SIGKILLed runner, then --resume) is test_reliability.py's SIGKILL test."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from helpers.sweeps import process_name, processes_naming, wait_for
from trainers.cpus import available_cpus
from tune_looped import cluster
from tune_looped.cluster import RUNNER_MARK, end_orphaned_sessions, mark_session, process_identity

SLEEP = "import time; time.sleep(120)"
# the port Ray gives every node's dashboard agent, unless told another (`ray start --dashboard-agent-listen-port`)
AGENT_PORT = 52365


def retitled(pid: int) -> bool:
    """Whether bash has exec'd the program it started under a `ray::` title."""
    return " ".join(psutil.Process(pid).cmdline()).startswith("ray::")


def fake_ray_process(session_name: str) -> subprocess.Popen:
    """A process titled as Ray's agents are, naming the session on its command line."""
    sleeper = f"{sys.executable} -c '{SLEEP}' {session_name}"
    process = subprocess.Popen(["bash", "-c", f"exec -a ray::FakeAgent {sleeper}"])
    wait_for(lambda: retitled(process.pid), 10, 0.01)
    return process


def fake_ray_worker(session_name: str, code: str = SLEEP) -> subprocess.Popen:
    """A program of the ray package as Ray's workers are, naming the session in an argument."""
    return subprocess.Popen([sys.executable, "-c", code, "/venv/lib/site-packages/ray/_private/workers/worker.py",
                             f"--session-dir=/tmp/ray/{session_name}"], stdout=subprocess.PIPE, text=True)


def sessions(root, count: int):
    folders = [root / f"session_2026-01-01_00-00-0{i}_000000_{i}" for i in range(count)]
    for folder in folders:
        folder.mkdir()
    return folders


def gone_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def running(*processes) -> bool:
    return all(process_identity(process.pid) for process in processes)


@pytest.fixture
def started():
    """Every process a test starts, killed after it."""
    processes = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def test_only_marked_sessions_of_a_gone_runner_are_ended(tmp_path, started):
    orphaned, live, unmarked = sessions(tmp_path, 3)
    (orphaned / RUNNER_MARK).write_text(f"{gone_pid()}:1")
    mark_session(live)  # this test process: a runner still running
    processes = {s.name: fake_ray_process(s.name) for s in (orphaned, live, unmarked)}
    not_ray = subprocess.Popen([sys.executable, "-c", SLEEP, orphaned.name])  # e.g. someone reading the session's logs
    started += [*processes.values(), not_ray]
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 1
    assert processes[orphaned.name].wait(timeout=10) is not None
    assert all(process_identity(processes[s.name].pid) for s in (live, unmarked))
    assert process_identity(not_ray.pid)
    assert not (orphaned / RUNNER_MARK).exists() and (live / RUNNER_MARK).exists()


def test_ray_processes_naming_the_session_or_holding_a_file_in_it_are_ended(tmp_path, started, capsys):
    orphaned, other = sessions(tmp_path, 2)
    (orphaned / RUNNER_MARK).write_text(f"{gone_pid()}:{time.time() - 60:.2f}")
    (orphaned / "agent.log").touch()
    worker, elsewhere = fake_ray_worker(orphaned.name), fake_ray_worker(other.name)
    # retitled like Ray's agents, nothing on its command line names the session: only the log it holds open does
    agent = subprocess.Popen(["bash", "-c", f"exec -a ray::FakeAgent {sys.executable} -c "
                              "'import os, time; log = open(os.environ[\"LOG\"]); time.sleep(120)'"],
                             env={**os.environ, "LOG": str(orphaned / "agent.log")})
    started += [worker, elsewhere, agent]
    wait_for(lambda: str(orphaned / "agent.log") in {f.path for f in psutil.Process(agent.pid).open_files()}, 10, 0.01)
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 2
    assert worker.wait(timeout=10) is not None and agent.wait(timeout=10) is not None
    assert running(elsewhere)
    assert capsys.readouterr().err == "warning: ended 2 Ray processes left behind by a killed runner\n"


def test_the_mark_records_the_sessions_processes_and_they_are_ended_once_they_no_longer_name_it(tmp_path, started):
    """An agent that exits on its own after its raylet died closes its log files first, and then names the session
    nowhere; the mark's record still finds it. A recorded pid that another process has taken since is left alone."""
    (orphaned,) = sessions(tmp_path, 1)
    (orphaned / "agent.log").touch()
    closing = "import os, sys, time; log = open(os.environ['LOG']); sys.stdin.readline(); log.close(); time.sleep(120)"
    agent = subprocess.Popen(["bash", "-c", f'exec -a ray::FakeAgent {sys.executable} -c "{closing}"'],
                             env={**os.environ, "LOG": str(orphaned / "agent.log")}, stdin=subprocess.PIPE, text=True)
    elsewhere = subprocess.Popen([sys.executable, "-c", SLEEP])
    started += [agent, elsewhere]
    wait_for(lambda: str(orphaned / "agent.log") in {f.path for f in psutil.Process(agent.pid).open_files()}, 10, 0.01)
    mark_session(orphaned)
    runner, recorded = (orphaned / RUNNER_MARK).read_text().splitlines()
    assert runner == process_identity(os.getpid()) and recorded == process_identity(agent.pid)
    agent.stdin.write("close\n")
    agent.stdin.flush()
    wait_for(lambda: not psutil.Process(agent.pid).open_files(), 10, 0.01)
    pid, created, ticks = process_identity(elsewhere.pid).split(":")
    # the runner gone, and a pid recorded that another process has since: its start ticks differ
    (orphaned / RUNNER_MARK).write_text(f"{gone_pid()}:1\n{recorded}\n{pid}:{created}:{int(ticks) - 1}\n")
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 1
    assert agent.wait(timeout=10) is not None and running(elsewhere)
    assert not (orphaned / RUNNER_MARK).exists()


def test_a_process_ignoring_term_is_killed(tmp_path, started, monkeypatch):
    monkeypatch.setattr(cluster, "TERM_GRACE_S", 0.2)
    (orphaned,) = sessions(tmp_path, 1)
    (orphaned / RUNNER_MARK).write_text(f"{gone_pid()}:1")
    stubborn = fake_ray_worker(orphaned.name, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                              "print('ready', flush=True); time.sleep(120)")
    started.append(stubborn)
    assert stubborn.stdout.readline() == "ready\n"
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 1
    assert stubborn.wait(timeout=10) is not None


def test_a_zombie_counts_as_ended_without_waiting_out_the_grace(tmp_path, started, monkeypatch):
    # a grace far beyond what listing the processes takes on any machine, so that only waiting it out can fail the
    # bound below, not a slow or busy CPU (the default second would leave a bound of half a second)
    monkeypatch.setattr(cluster, "TERM_GRACE_S", 60.0)
    (orphaned,) = sessions(tmp_path, 1)
    (orphaned / RUNNER_MARK).write_text(f"{gone_pid()}:1")
    # its parent, not this process, never reaps it: after TERM it stays a zombie
    parent = subprocess.Popen(["bash", "-c", f"exec -a ray::FakeAgent {sys.executable} -c '{SLEEP}' {orphaned.name} "
                               "& exec sleep 120"])
    started.append(parent)
    agent = wait_for(lambda: psutil.Process(parent.pid).children(), 10, 0.01)[0]
    wait_for(lambda: retitled(agent.pid), 10, 0.01)
    begun = time.monotonic()
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 1
    assert time.monotonic() - begun < cluster.TERM_GRACE_S / 2
    assert agent.status() == psutil.STATUS_ZOMBIE and process_identity(agent.pid) is None


def test_a_live_runner_keeps_its_session(tmp_path, started):
    """Also under a mark of an older runner (/proc start ticks, not comparable with a create time) whose pid runs,
    one without start ticks whose create time was read a second apart (psutil dates it from the boot time, in whole
    seconds), and one whose create time a stepped clock moved by an hour, the start ticks unchanged."""
    runner = subprocess.Popen([sys.executable, "-c", SLEEP])
    started.append(runner)
    pid, created, ticks = process_identity(runner.pid).split(":")
    marks = [f"{pid}:{created}:{ticks}", f"{pid}:123456", f"{pid}:{float(created) + 1:.2f}",
             f"{pid}:{float(created) - 3600:.2f}:{ticks}"]
    folders = sessions(tmp_path, len(marks))
    for folder, mark in zip(folders, marks):
        (folder / RUNNER_MARK).write_text(mark)
    workers = [fake_ray_worker(folder.name) for folder in folders]
    started += workers
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 0
    assert running(*workers) and all((folder / RUNNER_MARK).exists() for folder in folders)


@pytest.mark.parametrize("mark", [
    # the runner that wrote the mark had this pid an hour before the process that holds it now started
    "{pid}:{hour_before:.2f}",
    # the create times agree (the clock was stepped back as much), the start ticks do not
    "{pid}:{created}:{ticks_before}",
], ids=["create-time", "start-ticks"])
def test_a_reused_pid_is_not_the_runner(tmp_path, started, mark):
    (orphaned,) = sessions(tmp_path, 1)
    reuser = subprocess.Popen([sys.executable, "-c", SLEEP])
    worker = fake_ray_worker(orphaned.name)
    started += [reuser, worker]
    pid, created, ticks = process_identity(reuser.pid).split(":")
    (orphaned / RUNNER_MARK).write_text(mark.format(pid=pid, created=created, hour_before=float(created) - 3600,
                                                    ticks_before=int(ticks) - 360000))
    assert end_orphaned_sessions(tmp_path, keep=tmp_path / "session_current") == 1
    assert worker.wait(timeout=10) is not None and running(reuser)
    assert not (orphaned / RUNNER_MARK).exists()


def test_a_session_kept_or_with_an_unreadable_mark_is_left_alone(tmp_path, started):
    current, garbled = sessions(tmp_path, 2)
    (current / RUNNER_MARK).write_text(f"{gone_pid()}:1")
    (garbled / RUNNER_MARK).write_text("not a pid")
    workers = [fake_ray_worker(current.name), fake_ray_worker(garbled.name)]
    started += workers
    assert end_orphaned_sessions(tmp_path, keep=current) == 0
    assert running(*workers)


def test_process_identity(tmp_path):
    pid, created, ticks = process_identity(os.getpid()).split(":")
    assert int(pid) == os.getpid() and float(created) == pytest.approx(psutil.Process().create_time(), abs=0.01)
    assert "." in created  # what tells it from an older runner's start ticks
    # the start in clock ticks from the boot, read past a program name with a space and a parenthesis
    odd = tmp_path / "a) b"
    odd.symlink_to(sys.executable)
    named = subprocess.Popen([str(odd), "-c", SLEEP])
    try:
        _, created, ticks = process_identity(named.pid).split(":")
        assert psutil.Process(named.pid).name() == "a) b"
        since_boot = int(ticks) / os.sysconf("SC_CLK_TCK")
        assert since_boot == pytest.approx(float(created) - psutil.boot_time(), abs=1.1)
    finally:
        named.kill()
        named.wait()
    assert process_identity(gone_pid()) is None


def test_available_cpus_counts_the_affinity(monkeypatch):
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 3


def test_available_cpus_falls_back_to_the_cpu_count(monkeypatch):
    """As on macOS, which has no sched_getaffinity, before Python 3.13."""
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert available_cpus() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_available_cpus_prefers_process_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "process_cpu_count", lambda: 2, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert available_cpus() == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "node-1.cluster.local", "x."])
def test_a_dashboard_host_is_an_address_or_a_host_name(host):
    cluster.check_dashboard_host(host)


@pytest.mark.parametrize("host", ["", "not a host", "bad_host!", "999.1.1.1", "-node", "node-", "a" * 64, "[::1]",
                                  "http://node", "a..b"])
def test_a_dashboard_host_that_is_neither_is_one_line(host):
    with pytest.raises(cluster.SpaceError) as err:
        cluster.check_dashboard_host(host)
    assert str(err.value) == f"--dashboard-host: expected an IP address or a host name, got {host!r}"


def test_storage_uris_are_checked_by_their_scheme_only():
    assert cluster.check_storage("s3://bucket/results") == "s3://bucket/results"
    assert cluster.check_storage("gs://bucket/results") == "gs://bucket/results"
    with pytest.raises(cluster.SpaceError) as err:
        cluster.check_storage("foo://bucket/results")
    assert str(err.value).startswith("--storage foo://bucket/results: expected a local path or a URI of a filesystem "
                                     "pyarrow knows (file://, local://, s3://")
    assert str(err.value).endswith("), got foo://")


def test_the_schemes_are_those_pyarrow_reads():
    import pyarrow.fs

    assert {"s3", "gs"} <= set(cluster.storage_schemes())
    # s3:// and gs:// could go looking for credentials or a region on the network; the others fail locally
    for scheme in set(cluster.storage_schemes()) - {"s3", "gs", "gcs"}:
        try:
            pyarrow.fs.FileSystem.from_uri(f"{scheme}://")
        except Exception as err:  # a scheme pyarrow knows fails on its missing bucket, account or JVM instead
            assert "Unrecognized filesystem type" not in str(err), scheme
    with pytest.raises(pyarrow.ArrowInvalid, match="Unrecognized filesystem type"):
        pyarrow.fs.FileSystem.from_uri("foo://bucket")


def test_a_symlink_loop_as_storage_is_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(cluster.SpaceError, match=r"--storage .*/a: a symbolic link to nothing, or a loop of them"):
        cluster.check_storage(str(tmp_path / "a"))


@pytest.mark.slow
def test_a_held_ray_serves_the_next_sweep_is_replaced_when_asked_otherwise_and_ends_with_the_hold(capsys,
                                                                                                 monkeypatch):
    """A sequential study's rounds share the Ray its first sweep started (tune_looped/rounds.py). Each Ray ends
    without waiting on its autoscaler monitor (cluster._kill_monitor)."""
    import ray
    from ray._private.node import Node

    came_to = []  # (process type, whether it was running when Ray's shutdown came to it)
    kill = Node._kill_process_type

    def watched(node, process_type, *args, **kwargs):
        infos = node.all_processes.get(process_type, [])
        came_to.append((process_type, any(info.process.poll() is None for info in infos)))
        return kill(node, process_type, *args, **kwargs)

    monkeypatch.setattr(Node, "_kill_process_type", watched)

    def start(cpus: int):
        return cluster.start_ray(None, num_cpus=cpus, dashboard_host=None, verbose=False)

    with cluster.ray_held():
        first = start(1)
        cluster.stop_ray()
        assert ray.is_initialized()
        assert start(1) is first
        cluster.stop_ray()
        other = start(2)
        assert other.address_info["session_dir"] != first.address_info["session_dir"]
        assert ray.cluster_resources()["CPU"] == 2
        # no worker started ahead for the driver's tasks (a trial is an actor, with a worker of its own): Ray would
        # have two idling by the time ray.init returns
        workers = [process_name(p) for p in processes_naming(other.address_info["session_dir"])]
        assert "ray::IDLE" not in workers and "ray::DashboardAgent" in workers, workers
        cluster.stop_ray(keep=False)  # a stopped sweep ends its Ray at once, inside its signal handling
        assert not ray.is_initialized()
    with cluster.ray_held():
        start(1)
        cluster.stop_ray()
    assert not ray.is_initialized()
    # one line a start: the second sweep of the first hold did not start Ray again
    assert capsys.readouterr().err.count("Ray's own log lines:") == 3
    # the monitor was gone before Ray stopped the GCS, which it would otherwise have waited on for a second
    assert came_to.count(("gcs_server", True)) == came_to.count(("monitor", False)) == 3, came_to
    assert ("monitor", True) not in came_to


@pytest.mark.slow
def test_the_dashboard_agent_takes_a_free_port_when_another_local_ray_holds_ray_s_own():
    """Another local Ray (another runner's, a notebook's) holds the agent's fixed port, 52365: the runner's Ray
    starts its dashboard agent on a free port, where it answers, and not after Ray's retries on the held one."""
    import ray

    holder = socket.socket()
    with holder:
        with contextlib.suppress(OSError):  # already held, by another Ray of this machine: as well
            holder.bind(("", AGENT_PORT))
            holder.listen()
        context = cluster.start_ray(None, num_cpus=1, dashboard_host=None, verbose=False)
        try:
            (node,) = ray.nodes()
            port, host = node["DashboardAgentListenPort"], node["NodeManagerAddress"]
            assert port not in (AGENT_PORT, -1), port  # -1: the agent has no HTTP server
            answer = urllib.request.urlopen(f"http://{host}:{port}/api/local_raylet_healthz", timeout=10).read()
        finally:
            cluster.stop_ray()
    assert answer == b"success"
    log = Path(context.address_info["session_dir"]) / "logs" / "dashboard_agent.log"
    assert "Failed to bind" not in log.read_text()
