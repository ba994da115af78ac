"""One runner per experiment: the lock refuses a second holder while the first lives, names it, and is taken over
from a holder that is gone (its pid, on its own host) or silent (elsewhere: its lock unchanged while watched, by
the watcher's own clock, whatever the holder's clock says)."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers.sweeps import REPO, wait_for
from test_cluster import gone_pid
from trainers import atomic
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
    atomic.write_text(lock_file(experiment), json.dumps(holder))


HEARTBEAT_S = 0.25
STALE_S = 1.0  # the watch every take-over waits out: short, yet 4 heartbeats long
HOUR = 3600.0


@pytest.fixture
def short_watch(monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", HEARTBEAT_S)
    monkeypatch.setattr(lock_module, "STALE_S", STALE_S)


@pytest.fixture
def beating(tmp_path):
    """A live holder on another host whose clock is an hour behind this one's: it rewrites its heartbeat, by its
    own clock, every 0.05 s, as a runner there would."""
    stop = threading.Event()

    def beat():
        while not stop.wait(0.05):
            write_holder(tmp_path / "exp", host="elsewhere", started=time.time() - HOUR - 100,
                         heartbeat=time.time() - HOUR)

    write_holder(tmp_path / "exp", host="elsewhere", started=time.time() - HOUR - 100, heartbeat=time.time() - HOUR)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield tmp_path / "exp"
    stop.set()
    thread.join()


def held_by(experiment):
    return json.loads(lock_file(experiment).read_text())


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


def test_a_pid_reused_by_another_process_is_not_the_holder(tmp_path, capsys):
    experiment = tmp_path / "exp"
    pid, created, _ = process_identity(os.getpid()).split(":")
    # this process has the holder's pid but started an hour later: the holder is gone, whatever the pid says
    write_holder(experiment, pid=int(pid), identity=f"{pid}:{float(created) - 3600:.2f}", token="old")
    with ExperimentLock(experiment, "new"):
        assert held_by(experiment)["command"] == "new" and held_by(experiment)["token"] != "old"
    assert capsys.readouterr().err.rstrip().endswith(f"pid {pid} is gone")


def test_a_live_holder_whose_start_a_stepped_clock_moved_keeps_its_lock(tmp_path):
    """The create time read now is an hour from the one the holder wrote (the wall clock was stepped, or a virtual
    machine paused), the start ticks are the same: the same process, still running."""
    experiment = tmp_path / "exp"
    pid, created, ticks = process_identity(os.getpid()).split(":")
    write_holder(experiment, pid=int(pid), identity=f"{pid}:{float(created) + 3600:.2f}:{ticks}")
    with pytest.raises(SpaceError, match=f"in use by pid {pid} on "):
        ExperimentLock(experiment, "new").check_free(watch=False)
    assert held_by(experiment)["token"] == "t"


def test_a_command_refused_anyway_does_not_wait_for_a_holder_of_another_host(tmp_path, short_watch):
    """`--name` of an existing experiment without --resume is refused at once, not after a watch; a live holder on
    this host is still named, since telling the user to resume would only be refused next."""
    experiment = tmp_path / "exp"
    write_holder(experiment, host="elsewhere", heartbeat=time.time() - HOUR)
    began = time.monotonic()
    ExperimentLock(experiment, "new").check_free(watch=False)
    assert time.monotonic() - began < STALE_S / 2 and held_by(experiment)["token"] == "t"
    write_holder(experiment, pid=os.getpid(), identity=process_identity(os.getpid()))
    with pytest.raises(SpaceError, match=f"in use by pid {os.getpid()} on "):
        ExperimentLock(experiment, "new").check_free(watch=False)


def test_a_live_holder_of_another_host_whose_clock_is_behind_keeps_its_lock(beating, short_watch, monkeypatch,
                                                                            capsys):
    # its heartbeat is an hour old by this host's clock, but it changes: the holder lives. A long watch, so that a
    # busy machine's slow polls cannot make the beating holder look stale; the refusal comes at the first change
    monkeypatch.setattr(lock_module, "STALE_S", 30.0)
    for attempt in (lambda lock: lock.acquire(), lambda lock: lock.check_free()):
        began = time.monotonic()
        with pytest.raises(SpaceError) as refused:
            attempt(ExperimentLock(beating, "new"))
        assert time.monotonic() - began < 30.0, "refused only after the holder could have been judged stale"
        message = str(refused.value)
        assert message.startswith(f"{lock_file(beating)}: the experiment is in use by pid 4242 on elsewhere "
                                  "(python -m x, started ")
        assert message.endswith("by its clock), whose heartbeat this runner saw change; wait for it to end, or stop "
                                "it") and "\n" not in message
    assert held_by(beating)["token"] == "t" and held_by(beating)["host"] == "elsewhere"
    assert capsys.readouterr().err == "", "a holder seen beating needs no warning"


@pytest.mark.parametrize("skew", [HOUR, -HOUR], ids=["clock-ahead", "clock-behind"])
def test_a_dead_holder_of_another_host_is_taken_over_after_a_watch(tmp_path, short_watch, capsys, skew):
    """Whatever its heartbeat's time says, a single read never finds the lock stale; the watch does, by this
    host's clock. Ahead, today's time would not reach it for an hour; behind, it would look stale at once."""
    experiment = tmp_path / "exp"
    # a pid that runs here means nothing on another host
    write_holder(experiment, host="elsewhere", pid=os.getpid(), started=time.time() + skew - 100,
                 heartbeat=time.time() + skew)
    began = time.monotonic()
    with ExperimentLock(experiment, "new"):
        waited = time.monotonic() - began
        assert held_by(experiment)["host"] == socket.gethostname()
    assert STALE_S <= waited < STALE_S + 3
    waiting, took_over = capsys.readouterr().err.splitlines()
    assert waiting.startswith(f"warning: {lock_file(experiment)}: the heartbeat of pid {os.getpid()} on elsewhere "
                              "(python -m x, started ")
    assert re.search(r"by its clock\) has not changed for \d s; a lock of another host is taken over only once it "
                     r"has not changed for 1 s of watching, as that host's clock cannot be compared with this one's: "
                     r"waiting \d s more$", waiting)
    assert took_over.startswith(f"warning: {lock_file(experiment)}: took over the lock of pid {os.getpid()} on "
                                "elsewhere (python -m x, started ")
    assert re.search(r"by its clock\): its heartbeat did not change in [1-3] s$", took_over)


def test_a_runner_waits_out_a_dead_holder_once(tmp_path, short_watch, capsys):
    """check_free watches before the runner plans; acquire, on the same lock unchanged, takes it over at once."""
    experiment = tmp_path / "exp"
    write_holder(experiment, host="elsewhere", heartbeat=time.time() - HOUR)
    lock = ExperimentLock(experiment, "new")
    began = time.monotonic()
    lock.check_free()
    assert STALE_S <= time.monotonic() - began < STALE_S + 3
    assert held_by(experiment)["token"] == "t", "check_free wrote"
    began = time.monotonic()
    with lock:
        assert time.monotonic() - began < STALE_S, "watched a second time"
        assert held_by(experiment)["host"] == socket.gethostname()
    err = capsys.readouterr().err
    assert err.count("waiting") == 1 and err.count("took over the lock of pid 4242 on elsewhere") == 1


def test_a_lock_released_while_watched_is_taken_at_once(tmp_path, short_watch, capsys):
    experiment = tmp_path / "exp"
    write_holder(experiment, host="elsewhere")
    release = threading.Timer(0.3, lock_file(experiment).unlink)
    release.start()
    began = time.monotonic()
    with ExperimentLock(experiment, "new"):
        assert time.monotonic() - began < STALE_S
        assert held_by(experiment)["host"] == socket.gethostname()
    release.join()
    assert "took over" not in capsys.readouterr().err


@pytest.mark.parametrize("modified", [-120.0, HOUR], ids=["mtime-past", "mtime-future"])
def test_an_unreadable_lock_is_taken_over_after_a_watch_whatever_its_mtime(tmp_path, short_watch, capsys, modified):
    """A runner cut short while writing its lock; the file's time is the file server's clock, so it says nothing."""
    experiment = tmp_path / "exp"
    write_holder(experiment)
    lock_file(experiment).write_text('{"pid": 12')
    os.utime(lock_file(experiment), (time.time() + modified,) * 2)
    began = time.monotonic()
    with ExperimentLock(experiment, "new"):
        assert STALE_S <= time.monotonic() - began < STALE_S + 3
    waiting, took_over = capsys.readouterr().err.splitlines()
    assert waiting.startswith(f"warning: {lock_file(experiment)}: the lock, which does not read, has not changed")
    assert took_over.startswith(f"warning: {lock_file(experiment)}: took over the lock of an unreadable holder: the "
                                "lock does not read and did not change in ")


def test_a_lock_being_written_is_refused_once_it_reads(tmp_path, short_watch):
    experiment = tmp_path / "exp"
    write_holder(experiment)
    lock_file(experiment).write_text("")  # created, not yet written
    done = threading.Timer(0.3, lambda: write_holder(experiment, host="elsewhere"))
    done.start()
    with pytest.raises(SpaceError, match=r"in use by pid 4242 on elsewhere \(python -m x, started .* by its clock\), "
                                         "whose heartbeat this runner saw change"):
        ExperimentLock(experiment, "new").acquire()
    done.join()


def test_the_heartbeat_is_refreshed_and_stops_when_the_lock_is_taken(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    experiment = tmp_path / "exp"
    held = ExperimentLock(experiment, "first").acquire()
    first = json.loads(lock_file(experiment).read_text())["heartbeat"]
    wait_for(lambda: json.loads(lock_file(experiment).read_text())["heartbeat"] > first, timeout=30, every=0.02)
    write_holder(experiment, host="elsewhere", token="theirs")
    wait_for(lambda: "took this experiment's lock over" in capsys.readouterr().err, timeout=30, every=0.02)
    held.release()
    assert json.loads(lock_file(experiment).read_text())["token"] == "theirs", "released someone else's lock"


def test_on_a_uri_the_lock_is_a_marker(tmp_path):
    experiment = f"file://{tmp_path}/exp"
    with ExperimentLock(experiment, "first"):
        assert json.loads(lock_file(tmp_path / "exp").read_text())["command"] == "first"
        with pytest.raises(SpaceError, match=f"^{experiment}/.tune_looped/lock: the experiment is in use by pid"):
            ExperimentLock(experiment, "second").acquire()
    assert not lock_file(tmp_path / "exp").exists()
