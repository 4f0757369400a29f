"""TLS and SASL settings reach every client Accord makes, and their secrets reach no log (real broker and PostgreSQL).

What the embedded broker does with SASL (checked, not assumed): a client with
``security.protocol=SASL_PLAINTEXT`` and ``sasl.mechanism=PLAIN`` is refused at the
handshake ("SASL PLAIN mechanism handshake failed: Broker: Unsupported SASL mechanism"),
because it is started without SASL; a plaintext client works. So a SASL setting has
reached a client when (1) librdkafka's dump of the client's resolved configuration
(``ACCORD_KAFKA_DEBUG=conf``) shows it, and (2) that client fails the handshake. The
password is distinctive, and must appear nowhere on stdout or stderr.

Database TLS: the test PostgreSQL runs without TLS, so ``sslmode=require`` reaching a
connection is seen as libpq's "server does not support SSL" refusal, where
``sslmode=disable`` (or none) connects. A private PostgreSQL of this file's own, with TLS
on and client-certificate authentication (certificates made here with openssl), proves
the other three settings: the right CA and client certificate connect over TLS; another
CA, or no client certificate, is refused.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from accord.processor.control_lease import lease_for
from agreements import load_dir
from bus import kafka
from bus.connection_guard import psycopg_connect_args
from bus.database import engine_for
from bus.logs import configure_logging
from bus.settings import Settings
from tests.bus import Bus, make_settings, settings_env
from tests.conftest import fresh_role_database
from tests.ports import free_port

SECRET = "Qv7-sasl-secret-only-in-this-test-93Xk"
SASL = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.username": "accord-test",
    "sasl.password": SECRET,
    "debug": "conf,security,broker",
}
SASL_ENV = {"ACCORD_KAFKA_" + key.upper().replace(".", "_"): value for key, value in SASL.items()}
HANDSHAKE_FAILED = "SASL PLAIN mechanism handshake failed"


@pytest.fixture
def json_logs() -> Iterator[None]:
    import logging
    import threading

    root = logging.getLogger()
    handlers, level, hooks = list(root.handlers), root.level, (sys.excepthook, threading.excepthook)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.getLogger("librdkafka").setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _parsed(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON; fails naming the first line that is not a JSON object."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line[:300]!r}")
        assert isinstance(obj, dict), line
        lines.append(obj)
    return lines


def _client_evidence(lines: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Per librdkafka client name: what the lines show ('conf' for the SASL config, 'handshake' for its failure)."""
    seen: dict[str, set[str]] = {}
    for line in lines:
        if line.get("logger") != "librdkafka":
            continue
        client = str(line.get("client", "?"))
        event = str(line["event"]).strip()
        if line.get("facility") == "CONF" and event == "security.protocol = sasl_plaintext":
            seen.setdefault(client, set()).add("conf")
        if line.get("facility") == "CONF" and event == "sasl.password = [redacted]":
            seen.setdefault(client, set()).add("password redacted")
        if HANDSHAKE_FAILED in event:
            seen.setdefault(client, set()).add("handshake")
    return seen


CLIENTS: dict[str, Callable[[Settings], Any]] = {
    "producer": lambda s: kafka.producer(s),
    "consumer": lambda s: kafka.consumer(s, f"{s.topic_prefix}sasl-check"),
    "admin": lambda s: kafka.admin(s),
}


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_a_sasl_setting_reaches_each_kind_of_client_and_the_secret_no_log(
    broker: str, kind: str, json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # debug=all: every debug context librdkafka has, so a secret printed by any of them would show
    settings = Settings(bootstrap_servers=broker, kafka={**SASL, "debug": "all"}, log_format="json")
    configure_logging(settings)
    client = CLIENTS[kind](settings)
    deadline = time.monotonic() + 20
    out = err = ""
    try:
        while time.monotonic() < deadline:
            client.poll(0.5)  # librdkafka's lines are handed to the logger from poll()
            captured = capsys.readouterr()
            out, err = out + captured.out, err + captured.err
            if HANDSHAKE_FAILED in err:
                break
    finally:
        if kind == "consumer":
            client.close()
    evidence = _client_evidence(_parsed(err))
    assert any(e >= {"conf", "password redacted", "handshake"} for e in evidence.values()), evidence
    assert SECRET not in out + err
    assert out == ""


def test_the_same_client_without_the_settings_talks_to_the_broker(broker: str) -> None:
    """The control: the handshake failure above is the SASL setting's doing, not a broker that is down."""
    metadata = kafka.admin(Settings(bootstrap_servers=broker)).list_topics(timeout=10)
    assert metadata.brokers


def _run_processor(settings: Settings, extra_env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    env.update({**settings_env(settings), **extra_env})
    return subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "run", "processor"],
        env=env,
        stdout=(log_dir / "stdout").open("wb"),
        stderr=(log_dir / "stderr").open("wb"),
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_a_processor_given_sasl_settings_uses_them_in_every_client_and_prints_no_secret(
    broker: str, tmp_path: Path
) -> None:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path)
        Bus(settings, db.owner, load_dir(settings.agreements_dir)).create_topics()  # plainly, before the processor
        proc = _run_processor(settings, SASL_ENV, tmp_path)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                err = (tmp_path / "stderr").read_text()
                evidence = _client_evidence(_parsed(err))
                if any("consumer" in c and "handshake" in e for c, e in evidence.items()):
                    break
                time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
        finally:
            code = _stop(proc)
        out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
        assert SECRET not in out + err
        lines = _parsed(out) + _parsed(err)
        evidence = _client_evidence(lines)
        consumers = {c for c, e in evidence.items() if "consumer" in c and e >= {"conf", "password redacted"}}
        producers = {c for c, e in evidence.items() if "producer" in c and e >= {"conf", "password redacted"}}
        assert consumers and producers, evidence
        assert any("handshake" in e for e in evidence.values()), evidence
        assert code in (0, -15), code


def test_a_processor_given_a_certificate_that_does_not_exist_refuses_naming_it(broker: str, tmp_path: Path) -> None:
    missing = tmp_path / "kafka-ca.pem"
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path)
        env = {"ACCORD_KAFKA_SECURITY_PROTOCOL": "SSL", "ACCORD_KAFKA_SSL_CA_LOCATION": str(missing)}
        proc = _run_processor(settings, {**env, "ACCORD_LOG_FORMAT": "console"}, tmp_path)
        try:
            code = proc.wait(60)
        finally:
            _stop(proc)
    err = (tmp_path / "stderr").read_text()
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"accord run: ACCORD_KAFKA_SSL_CA_LOCATION: ssl.ca.location {missing} does not exist; "
        "give the path of an existing file"
    )


def test_database_tls_settings_reach_the_engine_and_the_lease(role_db: Any) -> None:
    plain = Settings(ledger_url=role_db.app_url)
    required = Settings(ledger_url=role_db.app_url, database_sslmode="require")
    disabled = Settings(ledger_url=role_db.app_url, database_sslmode="disable")
    for settings, works in ((plain, True), (disabled, True), (required, False)):
        engine = engine_for(settings)
        try:
            if works:
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT 1")).scalar() == 1
            else:
                with pytest.raises(OperationalError, match="server does not support SSL, but SSL was required"):
                    engine.connect()
            lease = lease_for(engine, psycopg_connect_args(2.0))
            assert lease.held() is works
            lease.release()
        finally:
            engine.dispose()


def test_a_processor_given_database_tls_the_server_lacks_waits_for_the_database(broker: str, tmp_path: Path) -> None:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path)
        proc = _run_processor(settings, {"ACCORD_DATABASE_SSLMODE": "require"}, tmp_path)
        try:
            deadline = time.monotonic() + 30
            waiting: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not waiting and proc.poll() is None:
                time.sleep(0.5)
                lines = _parsed((tmp_path / "stderr").read_text())
                waiting = [line for line in lines if line["event"] == "waiting" and line.get("service") == "database"]
            assert waiting, (tmp_path / "stderr").read_text()[-2000:]
            assert waiting[0]["error"] == "OperationalError"
        finally:
            _stop(proc)


@dataclass
class TlsPostgres:
    port: int
    certs: Path

    def url(self, user: str) -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/postgres"

    def tls(self, ca: str = "ca", client: bool = True) -> dict[str, str]:
        given = {"database_sslmode": "verify-full", "database_sslrootcert": str(self.certs / f"{ca}.crt")}
        if client:
            given |= {
                "database_sslcert": str(self.certs / "client.crt"),
                "database_sslkey": str(self.certs / "client.key"),
            }
        return given


def _run(*cmd: str, user: str | None = None) -> None:
    if user is not None and os.geteuid() == 0:  # PostgreSQL refuses to run as root
        cmd = ("runuser", "-u", user, "--", *cmd)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _certificate(folder: Path, name: str, cn: str, ca: str | None = None, san: str = "") -> None:
    """``name.key`` and ``name.crt``: self-signed when ``ca`` is None (a CA), else signed by ``ca``."""
    key, csr, crt, ext = (folder / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
    _run(
        "openssl",
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-subj",
        f"/CN={cn}",
        "-out",
        str(csr),
    )
    lines = (
        ["basicConstraints=critical,CA:TRUE", "keyUsage=keyCertSign,cRLSign"]
        if ca is None
        else ["basicConstraints=CA:FALSE"]
    )
    ext.write_text("\n".join([*lines, *([f"subjectAltName={san}"] if san else [])]) + "\n")
    sign = (
        ["-signkey", str(key)]
        if ca is None
        else ["-CA", str(folder / f"{ca}.crt"), "-CAkey", str(folder / f"{ca}.key"), "-CAcreateserial"]
    )
    _run("openssl", "x509", "-req", "-in", str(csr), *sign, "-days", "2", "-extfile", str(ext), "-out", str(crt))
    key.chmod(0o600)


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    """A PostgreSQL with TLS on: role ``accord_tls`` may log in only over TLS with a client certificate."""
    initdb = shutil.which("initdb")
    if initdb is None or shutil.which("openssl") is None:
        pytest.skip("needs PostgreSQL's server programs (initdb, pg_ctl) and openssl")
    bin_dir = Path(os.path.realpath(initdb)).parent
    folder = Path(tempfile.mkdtemp(prefix="accord-tls-pg-"))  # not under pytest's root-only folder: postgres reads it
    _certificate(folder, "ca", "accord test CA")
    _certificate(folder, "other-ca", "another CA")
    _certificate(folder, "server", "127.0.0.1", ca="ca", san="IP:127.0.0.1,DNS:localhost")
    _certificate(folder, "client", "accord_tls", ca="ca")
    server_user = "postgres" if os.geteuid() == 0 else None
    if server_user is not None:
        pg = pwd.getpwnam(server_user)
        for path in (folder, folder / "server.key", folder / "server.crt", folder / "ca.crt"):
            os.chown(path, pg.pw_uid, pg.pw_gid)
    data = folder / "data"
    _run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", user=server_user)
    (data / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "hostssl all accord_tls 127.0.0.1/32 cert\n"
        "hostssl all postgres 127.0.0.1/32 trust\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
    )
    port = free_port()
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} -c ssl=on "
        f"-c ssl_cert_file={folder}/server.crt -c ssl_key_file={folder}/server.key -c ssl_ca_file={folder}/ca.crt"
    )
    pg_ctl = str(bin_dir / "pg_ctl")
    _run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start", user=server_user)
    try:
        _run(
            str(bin_dir / "psql"),
            "-h",
            str(folder),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            "CREATE ROLE accord_tls LOGIN",
            user=server_user,
        )
        yield TlsPostgres(port, folder)
    finally:
        _run(pg_ctl, "-D", str(data), "-m", "immediate", "stop", user=server_user)
        shutil.rmtree(folder, ignore_errors=True)


def _tls_in_use(settings: Settings) -> bool | None:
    engine = engine_for(settings)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
    finally:
        engine.dispose()


def test_the_ca_and_the_client_certificate_settings_give_a_verified_tls_session(tls_postgres: TlsPostgres) -> None:
    settings = Settings.model_validate({"ledger_url": tls_postgres.url("accord_tls"), **tls_postgres.tls()})
    assert _tls_in_use(settings) is True
    engine = engine_for(settings)
    try:
        lease = lease_for(engine, psycopg_connect_args(5.0))
        assert lease.held() is True
        lease.release()
    finally:
        engine.dispose()


def test_another_ca_is_refused(tls_postgres: TlsPostgres) -> None:
    settings = Settings.model_validate({"ledger_url": tls_postgres.url("accord_tls"), **tls_postgres.tls("other-ca")})
    with pytest.raises(OperationalError, match="certificate verify failed"):
        _tls_in_use(settings)


def test_without_the_client_certificate_the_server_refuses(tls_postgres: TlsPostgres) -> None:
    settings = Settings.model_validate({"ledger_url": tls_postgres.url("accord_tls"), **tls_postgres.tls(client=False)})
    with pytest.raises(OperationalError, match="connection requires a valid client certificate"):
        _tls_in_use(settings)


def test_the_owner_engine_uses_the_same_tls(tls_postgres: TlsPostgres) -> None:
    from bus.database import owner_engine_for

    settings = Settings.model_validate(
        {"ledger_url": "", "ledger_owner_url": tls_postgres.url("accord_tls"), **tls_postgres.tls()}
    )
    owner = owner_engine_for(settings)
    try:
        with owner.connect() as conn:
            assert conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar() is True
    finally:
        owner.dispose()
