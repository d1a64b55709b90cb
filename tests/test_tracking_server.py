"""Issue #7, team tracking: `detector train` and `detector score` against an
`mlflow server` whose backend store is PostgreSQL, reached through MLFLOW_TRACKING_URI.

The test starts a throwaway PostgreSQL cluster (Debian's `postgresql` package; CI
installs it) and an mlflow server on 127.0.0.1 free ports, and stops both afterwards.
Without PostgreSQL it fails: the team set-up is a documented feature, not an option.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

STARTUP_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found and shutil.which(tool):
        return shutil.which(tool)
    assert found, (f"PostgreSQL's {tool} not found (expected /usr/lib/postgresql/*/bin/{tool}): "
                   f"install the Debian package `postgresql` (.ci/run does)")
    return found[-1]


def _as_postgres_user(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` system user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture
def tracking_server(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="detector-pg-"))  # readable by the postgres user
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    pg_port, mlflow_port = _free_port(), _free_port()
    pg_ctl = _postgres_bin("pg_ctl")
    server = None
    try:
        subprocess.run(_as_postgres_user([_postgres_bin("initdb"), "-D", str(data), "-U",
                                          "detector", "--auth=trust", "-E", "UTF8"]),
                       check=True, capture_output=True, timeout=60)
        subprocess.run(_as_postgres_user([
            pg_ctl, "-D", str(data), "-w", "-l", str(base / "postgres.log"), "-o",
            f"-p {pg_port} -k {sockets} -c listen_addresses=127.0.0.1", "start"]),
            check=True, capture_output=True, timeout=60)
        subprocess.run(_as_postgres_user([_postgres_bin("createdb"), "-h", "127.0.0.1", "-p",
                                          str(pg_port), "-U", "detector", "mlflow"]),
                       check=True, capture_output=True, timeout=30)
        with open(tmp_path / "mlflow-server.log", "w") as log:  # the child keeps its copy
            server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                 str(mlflow_port), "--workers", "1", "--backend-store-uri",
                 f"postgresql+psycopg2://detector@127.0.0.1:{pg_port}/mlflow",
                 "--artifacts-destination", (tmp_path / "artifacts").as_uri()],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        uri = f"http://127.0.0.1:{mlflow_port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                "mlflow server did not come up:\n" + (tmp_path / "mlflow-server.log").read_text()
            time.sleep(0.5)
        yield uri, pg_port
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if data.exists():
            subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w",
                                              "stop"]), capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _detector(args: list, uri: str, home: Path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DETECTOR_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_train_and_score_against_mlflow_server_on_postgres(world, tracking_server, tmp_path):
    uri, pg_port = tracking_server
    home = tmp_path / "home"
    trained = _detector(["train", world], uri, home)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "registered chip-diversion version 1 (champion)" in trained.stdout

    out = tmp_path / "scores.parquet"
    scored = _detector(["score", world, "--out", out, "--top", "3"], uri, home)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "(model chip-diversion/1)" in scored.stderr
    assert out.exists()

    # the run and the version live in PostgreSQL, not in an embedded SQLite store
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=pg_port, user="detector",
                          dbname="mlflow") as conn, conn.cursor() as cur:
        # the training run, and the drift figures `score` logged (issue #13)
        cur.execute("select e.name from runs r join experiments e "
                    "on r.experiment_id = e.experiment_id order by e.name")
        assert [r[0] for r in cur.fetchall()] == ["chip-diversion", "chip-diversion-drift"]
        cur.execute("select name, version from model_versions")
        assert cur.fetchall() == [("chip-diversion", 1)]
    assert not (home.exists() and list(home.rglob("*.db")))
