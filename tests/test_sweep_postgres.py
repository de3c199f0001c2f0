"""Sweep workers on a real PostgreSQL server: ``postgresql://`` URLs work with the drivers the
``sweep`` extra declares, queued trials are taken atomically, and of two workers on one grid, one
killed mid-trial, every grid point completes exactly once.

The test starts its own server (Debian's ``initdb``/``pg_ctl``, ``apt-get install postgresql``,
as ``.ci/run`` does) in a temporary directory, reachable only through a unix socket there, and
stops it afterwards; it skips, saying why, where the server binaries are not installed.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from test_sweep_workers import (  # noqa: E402
    GRID,
    STATE,
    finish,
    load_trials,
    point,
    sweep,
    take_race,
    trained,
    write_config,
)

from falign.training.sweep import SweepError, _database  # noqa: E402

PORT = 54329  # no TCP: the port only names the socket file in the server's private directory


def server_binaries() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``, newest major version first; else skip."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),  # Debian, Ubuntu
                   key=lambda p: int(re.search(r"/(\d+)/bin/", p)[1]), reverse=True)
    found += [p for p in [shutil.which("pg_ctl")] if p]
    for pg_ctl in found:
        bin_dir = Path(pg_ctl).parent
        if (bin_dir / "initdb").exists():
            return bin_dir
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under "
                "/usr/lib/postgresql/*/bin or on PATH: apt-get install postgresql (.ci/run does)")


def server_user() -> pwd.struct_passwd | None:
    """Whom to run the server as: PostgreSQL refuses root, so as root the Debian package's
    ``postgres`` user (else skip); as anyone else, themselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and there is no 'postgres' user to run the PostgreSQL "
                    "server as (it refuses root): apt-get install postgresql creates it")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A URL of a new PostgreSQL server's database, the server stopped and its files removed
    afterwards, also when a test fails."""
    bin_dir, user = server_binaries(), server_user()
    # A short path under /tmp: a socket path has at most 107 bytes, and the server's user must
    # be able to reach its directory (pytest's tmp_path is under a root-only directory).
    root = Path(tempfile.mkdtemp(prefix="falign-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    as_user = {}
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}

    def pg(*args: str) -> None:
        result = subprocess.run([str(a) for a in args], cwd=root, env=env, capture_output=True,
                                text=True, timeout=60, **as_user)
        if result.returncode:
            log = root / "server.log"
            raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}"
                               + (log.read_text() if log.exists() else ""))

    data = root / "data"
    started = False
    try:
        pg(bin_dir / "initdb", "-D", data, "-U", "falign", "--auth=trust", "-E", "UTF8",
           "--locale=C", "--no-sync")
        pg(bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "30",
           "-o", f"-p {PORT} -k {root} -c listen_addresses='' -c fsync=off "
                 "-c synchronous_commit=off -c full_page_writes=off", "start")
        started = True
        yield f"postgresql://falign@/postgres?host={root}&port={PORT}"
    finally:
        try:
            if started:
                pg(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_a_url_without_its_driver_says_what_to_install():
    try:
        import pg8000  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pg8000 is installed: no driver is missing")
    with pytest.raises(SweepError, match=r"no database driver .*pg8000.*falign\[sweep\]"):
        _database("postgresql+pg8000://falign@/postgres?host=/nonexistent")


def test_postgresql_urls_work_with_each_declared_driver(postgres_url):
    """``postgresql://`` means psycopg on SQLAlchemy >= 2.1, psycopg2 before: both are declared,
    and a study one makes the others read."""
    import sqlalchemy.engine

    assert sqlalchemy.engine.make_url(postgres_url).get_dialect().driver in ("psycopg", "psycopg2")
    tail = postgres_url.removeprefix("postgresql://")
    urls = [postgres_url, f"postgresql+psycopg://{tail}", f"postgresql+psycopg2://{tail}"]
    for i, url in enumerate(urls):
        optuna.create_study(study_name=f"driver-{i}", storage=_database(url)).enqueue_trial({"x": i})
    for url in urls:
        studies = {s.study_name: s for s in optuna.get_all_study_summaries(_database(url))}
        assert [studies[f"driver-{i}"].n_trials for i in range(3)] == [1, 1, 1]
    for i in range(3):
        optuna.delete_study(study_name=f"driver-{i}", storage=postgres_url)


def test_take_on_postgresql_gives_each_queued_trial_to_exactly_one_taker(postgres_url):
    take_race(lambda: optuna.storages.RDBStorage(postgres_url))
    optuna.delete_study(study_name="take", storage=postgres_url)


def read_lines(proc: subprocess.Popen) -> queue.Queue:
    """The lines a process prints, as they come (None at the end), read by a thread."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_two_workers_one_killed_mid_trial_complete_every_grid_point_once(data_root, tmp_path,
                                                                         postgres_url):
    cfg = write_config(tmp_path / "sw.yaml", GRID)
    out = tmp_path / "sw"
    where = ["--storage", postgres_url, "--heartbeat", "0.5"]
    victim, other = sweep(cfg, out, "--worker", *where), sweep(cfg, out, "--worker", *where)
    lines, seen = read_lines(victim), []
    deadline = time.monotonic() + 120
    while not (killed := trained("".join(seen))):  # the victim has begun training a trial
        assert time.monotonic() < deadline, "the worker started no trial:\n" + "".join(seen)
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, "the worker ended before it started a trial:\n" + "".join(seen)
        seen.append(line)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    (killed,) = killed
    assert load_trials(out, postgres_url)[killed].state == STATE.RUNNING  # killed inside it

    log = finish(other)
    assert "worker dead" in log
    trials = load_trials(out, postgres_url)
    assert trials[killed].state == STATE.FAIL
    assert all(t.state in (STATE.COMPLETE, STATE.FAIL) for t in trials)
    done = [t for t in trials if t.state == STATE.COMPLETE]
    assert sorted(point(t.params, GRID) for t in done) == sorted(itertools.product(*GRID.values()))
    (retry,) = [t for t in done if t.user_attrs.get("retry_of") == killed]
    assert retry.params == trials[killed].params
    assert sorted(trained(log)) == [t.number for t in done]  # the survivor trained each once
    # one run directory per grid point: the retry trained in the killed trial's
    assert len(list((out / "trials").iterdir())) == len(done)
    assert retry.user_attrs["run_dir"] == str(out / "trials" / f"sw-fa-{killed:03d}")
