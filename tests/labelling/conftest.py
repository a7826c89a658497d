"""Fixtures for the labelling app: a real PostgreSQL server and Chromium (Debian packages that
this setup installs when they are missing), tasks files and a served app in a subprocess."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ensure_debian_package(package: str, binary_glob: str) -> str:
    """The path of `binary_glob`, installing Debian's `package` first when it is missing (as
    root, or through sudo). Fails, naming the package, when it cannot be installed."""
    found = sorted(glob.glob(binary_glob))
    if found:
        return found[-1]
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        pytest.fail(f"Debian package {package!r} is needed and cannot be installed without "
                    f"root: run `apt-get install -y {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update", "-q"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"apt-get install {package} failed:\n{r.stderr[-2000:]}")
    found = sorted(glob.glob(binary_glob))
    if not found:
        pytest.fail(f"installed {package!r} but found no {binary_glob}")
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server of its own (initdb in a temporary directory, trust auth on loopback),
    started for this test session and stopped after it."""
    initdb = ensure_debian_package("postgresql", "/usr/lib/postgresql/*/bin/initdb")
    bindir = Path(initdb).parent
    base = Path(tempfile.mkdtemp(prefix="rlhf_pg_"))
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                              "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    port = free_port()
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-t",
                              "60", "-l", str(base / "log"), "start"], check=True,
                   capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_postgres(postgres_url):
    """An empty database on the session's server (one per test)."""
    import sqlalchemy as sa

    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same storage tests on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.sqlite'}"
    return request.getfixturevalue("fresh_postgres")


@pytest.fixture(scope="session")
def chromium():
    return ensure_debian_package("chromium", "/usr/bin/chromium")


def run_script(*args, cwd):
    """`experiments/label_server.py` with `args`, run to its end in `cwd`."""
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "label_server.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def simple_tasks(n: int, k: int = 2) -> list[dict]:
    return [{"prompt": f"prompt {i}", "responses": [f"response {i}.{j}" for j in range(k)]}
            for i in range(n)]


class Server:
    """`experiments/label_server.py` in a subprocess on a free port."""

    def __init__(self, tmp: Path, *args: str):
        self.tokens_file = tmp / f"tokens-{time.monotonic_ns()}.tsv"
        self.log = open(tmp / f"server-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "experiments" / "label_server.py"), "--config.port=0",
             f"--config.tokens_file={self.tokens_file}", *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            text = Path(self.log.name).read_text()
            m = re.search(r"Serving on (http://\S+)/", text)
            if m:
                self.url = m.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{text}")
            time.sleep(0.1)
        self._wait_healthy()
        self.output = Path(self.log.name).read_text()
        self.links = {}
        if self.tokens_file.exists():
            for line in self.tokens_file.read_text().splitlines():
                name, link = line.split("\t")
                self.links[name] = link

    def _wait_healthy(self):
        import httpx

        for _ in range(300):
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server never answered /healthz")

    def token(self, name: str) -> str:
        return self.links[name].split("token=", 1)[1]

    def kill(self) -> None:
        """SIGKILL, no chance to flush or clean up."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def form_fields(html: str) -> dict:
    """The hidden fields of a page's form (csrf, assignment)."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))


def app_env(url: str, settings=None, annotators=("ann1", "ann2", "ann3"), tasks=None,
            **store_kw):
    """(store, tokens, client) for the app over a new store at `url`: the annotators, the admin
    boss and the tasks (by default a two-response task t0 and a three-response task t1);
    `client(name)` is a test client logged in as `name` (None: anonymous)."""
    from starlette.testclient import TestClient

    from rlhf_jax import labelling

    store = labelling.LabelStore(url, **{"labels_per_task": 2, **store_kw})
    tokens = {n: store.add_annotator(n) for n in annotators}
    tokens["boss"] = store.add_annotator("boss", "admin")
    store.add_tasks(tasks or [{"prompt": "p0", "responses": ["alpha", "beta"], "id": "t0"},
                              {"prompt": "p1", "responses": ["one", "two", "three"], "id": "t1"}])
    app = labelling.create_app(store, settings or labelling.AppSettings(likert=(1, 5)))

    def client(name):
        c = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False,
                       raise_server_exceptions=False)
        if name:
            r = c.get("/login", params={"token": tokens[name]})
            assert r.status_code == 303
        return c
    return store, tokens, client
