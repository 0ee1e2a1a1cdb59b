"""A throw-away PostgreSQL server for the autotune tests: initdb + pg_ctl in a temporary folder, on a free local
port, with a login role that has a password. Where it cannot start, the tests that need it skip and say why
(`GEOSDM_REQUIRE_POSTGRES=1`, set by .ci/run, turns that skip into a failure)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def _skip(why: str):
    if os.environ.get('GEOSDM_REQUIRE_POSTGRES') == '1':
        pytest.fail(f'PostgreSQL test server: {why} (GEOSDM_REQUIRE_POSTGRES=1)')
    pytest.skip(f'PostgreSQL test server: {why}')


def _bin_dir() -> Path | None:
    "The newest Debian PostgreSQL (/usr/lib/postgresql/N/bin), else the folder of an `initdb` on PATH."
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which('initdb')
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    "A running server: `url(db)` is a password URL for database `db` (see `create_db`)."

    bin: Path
    root: Path
    port: int
    as_user: list[str]
    password: str = field(default_factory=lambda: f'pw-{secrets.token_hex(8)}')
    user: str = 'geosdm'

    def run(self, tool: str, *args: str, **kw):
        return subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, text=True, **kw
        )

    def sql(self, statement: str, db: str = 'postgres'):
        "Run one statement as the superuser over the unix socket (trusted locally)."
        args = ('-h', str(self.root), '-p', str(self.port), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1')
        return self.run('psql', *args, input=statement)

    def create_db(self, name: str) -> str:
        "A new empty database owned by the login role; returns its URL (password included)."
        self.sql(f'CREATE DATABASE {name} OWNER {self.user};')
        return self.url(name)

    def dump(self, db: str) -> str:
        "Everything database `db` holds, as SQL text."
        return self.run('pg_dump', '-h', str(self.root), '-p', str(self.port), '-U', 'postgres', db).stdout

    def url(self, db: str, password: bool = True) -> str:
        auth = f'{self.user}:{self.password}' if password else self.user
        return f'postgresql://{auth}@127.0.0.1:{self.port}/{db}'


def start_server() -> PgServer:
    "initdb, start, and create the login role; skips (see `_skip`) where that is not possible."
    b = _bin_dir()
    if b is None:
        _skip('no initdb found (Debian: apt-get install postgresql)')
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the `postgres` account
        try:
            pw = pwd.getpwnam('postgres')
        except KeyError:
            _skip('running as root and there is no `postgres` user to run the server as')
        if not shutil.which('runuser'):
            _skip('running as root and `runuser` is missing')
        as_user = ['runuser', '-u', 'postgres', '--']
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip('the driver psycopg is missing (pip install -e ".[dev]")')
    root = Path(tempfile.mkdtemp(prefix='geosdm-pg-'))  # /tmp, not pytest's root-only tmp folders
    if as_user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    s = PgServer(b, root, _free_port(), as_user)
    try:
        s.run('initdb', '-D', str(root / 'data'), '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256')
        opts = f'-p {s.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off'
        s.run('pg_ctl', '-D', str(root / 'data'), '-l', str(root / 'server.log'), '-w', '-o', opts, 'start')
        s.sql(f"CREATE ROLE {s.user} LOGIN PASSWORD '{s.password}';")
    except (subprocess.CalledProcessError, OSError) as e:
        stop_server(s)
        _skip('could not start it: ' + ' '.join(str(getattr(e, 'stderr', None) or e).split()))
    return s


def stop_server(s: PgServer):
    subprocess.run(
        [*s.as_user, str(s.bin / 'pg_ctl'), '-D', str(s.root / 'data'), '-m', 'immediate', 'stop'], capture_output=True
    )
    shutil.rmtree(s.root, ignore_errors=True)


@pytest.fixture(scope='module')
def postgres():
    "A throw-away PostgreSQL server for the module's tests, stopped and removed after them."
    s = start_server()
    yield s
    stop_server(s)
