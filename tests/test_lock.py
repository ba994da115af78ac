"""One runner per experiment: the lock refuses a second holder while the first lives, names it, and is taken over
from a holder that is gone (its pid, on its own host) or silent (its heartbeat, elsewhere)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from helpers.sweeps import REPO, wait_for
from test_cluster import gone_pid
from tune_looped import lock as lock_module
from tune_looped.cluster import process_identity
from tune_looped.lock import ExperimentLock
from tune_looped.space import SpaceError


def lock_file(experiment):
    return experiment / ".tune_looped" / "lock"


def write_holder(experiment, **fields):
    now = time.time()
    holder = {"pid": 4242, "host": socket.gethostname(), "identity": "4242:1.00", "command": "python -m x",
              "started": now - 100, "heartbeat": now, "token": "t", **fields}
    lock_file(experiment).parent.mkdir(parents=True, exist_ok=True)
    lock_file(experiment).write_text(json.dumps(holder))


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path):
    experiment = tmp_path / "exp"
    with ExperimentLock(experiment, "python -m tune_looped.run"):
        held = json.loads(lock_file(experiment).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["identity"] == process_identity(os.getpid()) and held["command"] == "python -m tune_looped.run"
        assert abs(held["started"] - time.time()) < 5 and held["heartbeat"] >= held["started"]
        with pytest.raises(SpaceError) as refused:
            ExperimentLock(experiment, "python -m tune_looped.upgrade").acquire()
        message = str(refused.value)
        assert message.startswith(f"{lock_file(experiment)}: the experiment is in use by pid {os.getpid()} on "
                                  f"{socket.gethostname()} (python -m tune_looped.run, started ")
        assert message.endswith("s ago); wait for it to end, or stop it") and "\n" not in message
    # released: the lock and the folder it alone was in are gone
    assert not (experiment / ".tune_looped").exists()


def test_a_lock_of_another_process_is_refused_while_it_lives(tmp_path):
    experiment = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tune_looped.lock import ExperimentLock; "
                               "ExperimentLock(sys.argv[1], 'holder').acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(experiment)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SpaceError, match=f"in use by pid {holder.pid} on "):
            ExperimentLock(experiment, "second").acquire()
        with pytest.raises(SpaceError, match=f"in use by pid {holder.pid} on "):
            ExperimentLock(experiment, "second").check_free()
    finally:
        holder.kill()
        holder.wait()
    # killed, it could not release: its pid is gone, so the lock is free at once, whatever its heartbeat says
    ExperimentLock(experiment, "second").check_free()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, capsys):
    experiment = tmp_path / "exp"
    pid = gone_pid()
    write_holder(experiment, pid=pid, identity=f"{pid}:1.00")
    with ExperimentLock(experiment, "new"):
        assert json.loads(lock_file(experiment).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {lock_file(experiment)}: took over the lock of pid {pid} on ")
    assert err.rstrip().endswith(f"pid {pid} is gone")


def test_a_pid_reused_by_another_process_is_not_the_holder(tmp_path):
    experiment = tmp_path / "exp"
    pid, created = process_identity(os.getpid()).split(":")
    write_holder(experiment, pid=int(pid), identity=f"{pid}:{float(created) - 3600:.2f}")
    with ExperimentLock(experiment, "new"):
        pass


def test_on_another_host_the_heartbeat_decides(tmp_path, capsys):
    experiment = tmp_path / "exp"
    # a pid that runs here means nothing on another host: only the heartbeat is checked
    write_holder(experiment, host="elsewhere", pid=os.getpid(), heartbeat=time.time() - 30)
    with pytest.raises(SpaceError, match="in use by pid .* on elsewhere .*last heartbeat 30 s ago"):
        ExperimentLock(experiment, "new").acquire()
    write_holder(experiment, host="elsewhere", heartbeat=time.time() - 61)
    with ExperimentLock(experiment, "new"):
        assert json.loads(lock_file(experiment).read_text())["host"] == socket.gethostname()
    assert "took over the lock of pid 4242 on elsewhere" in capsys.readouterr().err


def test_an_unreadable_lock_is_held_until_it_is_stale(tmp_path):
    experiment = tmp_path / "exp"
    write_holder(experiment)
    lock_file(experiment).write_text('{"pid": 12')  # a runner cut short while writing it
    with pytest.raises(SpaceError, match="in use by a runner writing its lock at this moment"):
        ExperimentLock(experiment, "new").acquire()
    old = time.time() - 120
    os.utime(lock_file(experiment), (old, old))
    with ExperimentLock(experiment, "new"):
        pass


def test_the_heartbeat_is_refreshed_and_stops_when_the_lock_is_taken(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    experiment = tmp_path / "exp"
    held = ExperimentLock(experiment, "first").acquire()
    first = json.loads(lock_file(experiment).read_text())["heartbeat"]
    wait_for(lambda: json.loads(lock_file(experiment).read_text())["heartbeat"] > first, timeout=5, every=0.02)
    write_holder(experiment, host="elsewhere", token="theirs")
    wait_for(lambda: "took this experiment's lock over" in capsys.readouterr().err, timeout=5, every=0.02)
    held.release()
    assert json.loads(lock_file(experiment).read_text())["token"] == "theirs", "released someone else's lock"


def test_on_a_uri_the_lock_is_a_marker(tmp_path):
    experiment = f"file://{tmp_path}/exp"
    with ExperimentLock(experiment, "first"):
        assert json.loads(lock_file(tmp_path / "exp").read_text())["command"] == "first"
        with pytest.raises(SpaceError, match=f"^{experiment}/.tune_looped/lock: the experiment is in use by pid"):
            ExperimentLock(experiment, "second").acquire()
    assert not lock_file(tmp_path / "exp").exists()
