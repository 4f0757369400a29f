"""One settings object, read from ``ACCORD_*`` environment variables.

Every other module takes its configuration from :func:`get_settings` so that
there is exactly one place that reads the environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# ACCORD_KAFKA_<NAME>=value sets librdkafka's <name> (lower case, "_" -> "."), e.g.
# ACCORD_KAFKA_SECURITY_PROTOCOL=SASL_SSL -> security.protocol: any client setting, one mapping.
KAFKA_ENV_PREFIX = "ACCORD_KAFKA_"


def kafka_property(env_name: str) -> str:
    """``ACCORD_KAFKA_SSL_CA_LOCATION`` -> ``ssl.ca.location`` (librdkafka's names use dots)."""
    return env_name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")


class _KafkaEnvSource(PydanticBaseSettingsSource):
    """Gathers every ``ACCORD_KAFKA_*`` variable into the ``kafka`` setting."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {kafka_property(k.upper()): v for k, v in os.environ.items() if k.upper().startswith(KAFKA_ENV_PREFIX)}
        return {"kafka": found} if found else {}


_URL_EXAMPLES = "postgresql+psycopg://user@host:5432/accord or sqlite:///path/to/ledger.db"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
UNENCODED_AT = "its password or user name holds an '@' that is not percent-encoded: write each '@' in it as %40"


def database_url_problem(url: str) -> str | None:
    """Why a ledger or consent database URL cannot work (None if it can), never repeating it: it may hold a password.

    Caught here, where the variable is named, rather than as a driver's error later: a
    plain ``postgresql://`` is psycopg2 to SQLAlchemy (not installed), and an ``@`` left in
    a password makes the rest of it the host, which the driver's error then prints.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # a malformed URL, or a port that is not a number
        return (
            "not a database URL SQLAlchemy can read (check the scheme, the host and that the port is a "
            f"number); give one such as {_URL_EXAMPLES}"
        )
    if "@" in (parsed.host or ""):
        return UNENCODED_AT
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return None
    if backend != "postgresql":
        return f"Accord's database is PostgreSQL or SQLite, not {backend[:20]}; give a URL such as {_URL_EXAMPLES}"
    if parsed.drivername != "postgresql+psycopg":
        return "Accord connects to PostgreSQL with psycopg 3: begin the URL with postgresql+psycopg://"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCORD_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (host:port[,host:port])")
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka settings given to every Kafka client Accord makes (TLS, SASL, ...): "
        "ACCORD_KAFKA_<NAME> sets <name> in lower case with '_' as '.' (ACCORD_KAFKA_SECURITY_PROTOCOL=SASL_SSL "
        "-> security.protocol), or ACCORD_KAFKA as a JSON object",
    )
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor of every topic Accord creates (3 on a production cluster)"
    )
    topic_min_insync_replicas: int = Field(
        1, ge=1, description="min.insync.replicas of every topic Accord creates (2 on a production cluster)"
    )
    topic_partitions: dict[str, int] = Field(
        default_factory=dict,
        description='Partitions per topic, as a JSON object by event type (e.g. {"custody": 12}); a type '
        "not named keeps its catalogue's accord.partitions",
    )
    state_dir: Path = Field(
        Path(".accord"), description="Where the embedded broker keeps its pid and log, and the demo its SQLite ledger"
    )
    ledger_url: str = Field(
        "", description="SQLAlchemy URL of the ledger and consent database; empty means SQLite in state_dir"
    )
    ledger_owner_url: str = Field(
        "",
        description="URL of the role that OWNS the ledger tables; used only by `accord ledger init` "
        "(PostgreSQL). The bus runs as ledger_url's role and refuses to run as the owner.",
    )
    ledger_app_role: str = Field(
        "", description="Role `accord ledger init` grants SELECT/INSERT to; empty means ledger_url's user"
    )
    agreements_dir: Path = Field(PACKAGE_ROOT / "agreements" / "examples", description="Folder of agreement YAML files")
    partners_file: Path = Field(
        PACKAGE_ROOT / "agreements" / "partners.yaml", description="Partner id -> recipient class registry"
    )
    pseudonym_key: SecretStr = Field(
        SecretStr(""), description="Secret for per-recipient pseudonyms; required when an agreement pseudonymises"
    )
    api_secret: SecretStr = Field(SecretStr(""), description="HS256 secret (32+ bytes) that signs consent API tokens")
    api_host: str = "127.0.0.1"
    dpo_contact: str = Field(
        "",
        description="Who citizens contact about their data (the data protection officer), "
        "shown on /me; empty: not shown",
    )
    dpo_email: str = Field("", description="The data protection officer's email address, shown on /me")
    complaint_url: str = Field(
        "https://ico.org.uk/make-a-complaint/",
        description="Where a citizen complains; the ICO's form unless the deployment has its own",
    )
    api_port: int = Field(8000, ge=1, le=65535, description="Port of `accord serve` and `accord consent serve`")
    topic_prefix: str = Field("", description="Prefix of every topic name, to share one broker")
    processor_group: str = Field(
        "accord-processor", description="Consumer group of the sharing processor (every worker joins it)"
    )
    batch_size: int = Field(500, ge=1, description="Most events the processor decides in one batch")
    batch_window_s: float = Field(
        0.2,
        gt=0,
        description="Longest the processor waits for a record when none is there; a batch is then "
        "whatever has arrived (up to ACCORD_BATCH_SIZE), never held back to fill up",
    )
    fetch_wait_max_ms: int = Field(
        10,
        ge=0,
        description="librdkafka fetch.wait.max.ms of the processor's consumer: how long the broker may "
        "hold a fetch when no record is waiting (the embedded broker holds every fetch this long, so it is a "
        "floor under latency there)",
    )
    retraction_interval_s: float = Field(1.0, gt=0, description="How often the processor looks for withdrawn consent")
    retraction_busy: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The share of its time a large retraction (an agreement suspended) may take from the "
        "event stream: after each chunk it rests in proportion, leaving the database and the cores to the events",
    )
    ledger_signing_key: SecretStr = Field(
        SecretStr(""),
        description="Ed25519 key signing ledger checkpoints: a signed-note key (PRIVATE+KEY+<name>+<id>+<base64>) "
        "or the base64 of a 32-byte seed; empty means <state_dir>/ledger-signing.key if it exists "
        "(`accord ledger keygen`), else no checkpoints",
    )
    ledger_verifier_key: str = Field(
        "", description="The ledger's public key (<name>+<id>+<base64>) for verify; empty means the signing key's"
    )
    ledger_origin: str = Field("accord.example/ledger", description="Origin line (and key name) of checkpoints")
    checkpoint_every_entries: int = Field(10_000, ge=1, description="Checkpoint once the tree grew this much")
    checkpoint_interval_s: float = Field(
        60.0, gt=0, description="...or once this long passed since the last (if it grew)"
    )
    session_timeout_ms: int = Field(6000, ge=1000, description="Consumer group session timeout")
    heartbeat_interval_ms: int = Field(1500, ge=100, description="Consumer group heartbeat interval")
    max_event_bytes: int = Field(
        524_288, ge=1024, description="Largest encoded event the bus accepts; a larger one is refused or dead-lettered"
    )
    max_string_bytes: int = Field(65_536, ge=64, description="Longest string field (UTF-8 bytes) an event may carry")
    database_sslmode: Literal["", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "",
        description="libpq sslmode of the PostgreSQL connections (verify-full in production); empty: libpq's default",
    )
    database_sslrootcert: str = Field("", description="CA certificate file the database server's is checked against")
    database_sslcert: str = Field("", description="Client certificate file, when the database asks for one")
    database_sslkey: str = Field("", description="The client certificate's private key file")
    relay_source_url: str = Field(
        "", description="SQLAlchemy URL of the source system's PostgreSQL database that holds the outbox (accord relay)"
    )
    relay_table: str = Field("accord_outbox", description="The outbox table `accord relay` reads")
    relay_batch_size: int = Field(500, ge=1, description="Most outbox rows the relay publishes per transaction")
    relay_poll_interval_s: float = Field(0.5, gt=0, description="How often the relay looks for new outbox rows")
    relay_once_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long `accord relay --once` waits for rows held back by a transaction still open on the "
        "source database server, or for a broker or source database that stopped answering, before it exits, "
        "saying so",
    )
    database_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Connect and statement timeout of the ledger database; dead connections are "
        "noticed within about this long (TCP keepalives and user timeout)",
    )
    leave_group_on_stop: bool = Field(
        False,
        description="Whether a stopping processor leaves its consumer group at once (its partitions move "
        "immediately) instead of letting its session expire (they move after ACCORD_SESSION_TIMEOUT_MS). "
        "Safe and faster on Apache Kafka; off by default because the embedded broker (Tansu 0.6) can keep a "
        "departed leader when members leave one after another, and then never assigns that group again",
    )
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the processor's health checks and metrics (GET /health, /healthz, /readyz, /metrics; "
        "worker i of --workers N uses port + i); 0 is off",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"give one of {', '.join(_LOG_LEVELS)}")
        return value.upper()

    @field_validator("ledger_url", "ledger_owner_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        problem = database_url_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _KafkaEnvSource(settings_cls), env_settings, dotenv_settings, file_secret_settings

    @property
    def resolved_ledger_url(self) -> str:
        if self.ledger_url:
            return self.ledger_url
        return f"sqlite:///{(self.state_dir / 'ledger.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
