"""compose/compose.yaml held to the code, since no Docker engine runs here to try it.

Each check is a function from the parsed file to a list of problems (empty: it holds).
The real file must give none; and every check is shown to catch a broken copy of it
(``BREAKAGES``), so a check that can no longer fail is itself a failing test.

What is checked:

1. every service has a pinned image (a tag other than ``latest``) or a build;
2. every Accord container's command parses with Accord's own parser (``accord.cli.build_parser``);
3. every ``ACCORD_*`` variable is a field of ``bus.settings.Settings`` or an ``ACCORD_KAFKA_*``
   naming a real librdkafka property, and each Accord service's whole environment gives
   valid Settings (and a topic layout that can work);
4. ``depends_on`` names real services, with conditions they can meet;
5. Prometheus scrapes real services on the ports their environment opens, at /metrics,
   and each health check asks the port the service listens on;
6. the Kafka cluster hangs together: the quorum voters are the controllers, the bootstrap
   servers are the brokers' advertised listeners, the replication fits the brokers;
7. the roles: the processor and serve connect as the application role, ``ledger init`` as the
   owner, and those are the roles the PostgreSQL init script creates;
8. every file a service mounts from the repository exists; every variable the file needs
   from ``compose/.env`` is in ``compose/env.example``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from confluent_kafka import KafkaException, Producer
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from accord.cli import build_parser
from bus import kafka as kafka_clients
from bus.settings import KAFKA_ENV_PREFIX, Settings, kafka_property
from bus.topics import TopicLayout

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / "env.example"
SETTING_VARS = {f"ACCORD_{name.upper()}" for name in Settings.model_fields}
# The librdkafka properties Accord sets itself (bus/kafka.py), if this version names them.
OWNED: dict[str, str] = dict(getattr(kafka_clients, "OWNED", {}))
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

Compose = dict[str, Any]
Check = Callable[[Compose], list[str]]


# -- reading the file as Docker Compose would ------------------------------------------------

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def required_variables(text: str) -> set[str]:
    """Variables the file needs from compose/.env: those without a default (``${X}``, ``${X:?...}``)."""
    return {m["name"] for m in _VAR.finditer(text) if m["name"] and (m["op"] or "").lstrip(":") != "-"}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${X}``, ``${X:-default}``, ``${X:?error}`` and ``$$``; a missing required one raises."""

    def one(m: re.Match[str]) -> str:
        if m["name"] is None:
            return "$"
        value, op = env.get(m["name"]), m["op"] or ""
        if value is None or (op.startswith(":") and value == ""):
            if op.endswith("-"):
                return str(m["arg"])
            if op.endswith("?"):
                raise KeyError(f"{m['name']}: {m['arg']}")
            return ""
        return value

    return _VAR.sub(one, text)


def filled_example() -> dict[str, str]:
    """compose/env.example as an operator fills it in (its values are empty on purpose)."""
    return {name: value or f"filled{name.lower().replace('_', '')}" for name, value in env_example().items()}


def load(text: str | None = None) -> Compose:
    raw = COMPOSE_FILE.read_text() if text is None else text
    loaded = yaml.safe_load(interpolate(raw, filled_example()))
    assert isinstance(loaded, dict)
    return loaded


def services(c: Compose) -> dict[str, dict[str, Any]]:
    return dict(c.get("services") or {})


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (COMPOSE_DIR / build / "Dockerfile").resolve()
    return (COMPOSE_DIR / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()


def is_accord(service: dict[str, Any]) -> bool:
    """Built from compose/Dockerfile, whose entrypoint is ``accord``."""
    return dockerfile_of(service) == (COMPOSE_DIR / "Dockerfile").resolve()


def accord_services(c: Compose) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services(c).items() if is_accord(s)}


def port_of(value: str) -> int:
    return int(value)


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load()


# -- the checks --------------------------------------------------------------------------------


def check_images(c: Compose) -> list[str]:
    problems = []
    for name, s in services(c).items():
        image, build = s.get("image"), s.get("build")
        if image is None and build is None:
            problems.append(f"{name}: neither image nor build")
            continue
        if image is not None:
            ref = str(image).split("@", 1)
            repo_tag = ref[0].rsplit("/", 1)[-1]
            tag = repo_tag.partition(":")[2]
            if len(ref) == 1 and (not tag or tag == "latest"):
                problems.append(f"{name}: image {image} is not pinned to a tag")
        if build is not None:
            dockerfile = dockerfile_of(s)
            if dockerfile is None or not dockerfile.is_file():
                problems.append(f"{name}: builds from {dockerfile}, which does not exist")
    return problems


def _dockerfile_entrypoint() -> list[str]:
    for line in (COMPOSE_DIR / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return list(yaml.safe_load(line.removeprefix("ENTRYPOINT").strip()))
    return []


def check_commands(c: Compose) -> list[str]:
    problems = []
    if _dockerfile_entrypoint() != ["accord"]:
        problems.append('compose/Dockerfile: ENTRYPOINT is not ["accord"], so commands are not accord\'s arguments')
    for name, s in accord_services(c).items():
        if "entrypoint" in s:
            problems.append(f"{name}: overrides the entrypoint; commands are checked as accord's arguments")
        command = s.get("command")
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            problems.append(f"{name}: command must be a list of strings (accord's arguments), not {command!r}")
            continue
        try:
            build_parser().parse_args(command)
        except SystemExit:
            problems.append(f"{name}: `accord {' '.join(command)}` does not parse")
    return problems


def _unknown_kafka_property(prop: str, value: str) -> str | None:
    try:
        Producer({prop: value})
    except KafkaException as exc:
        return str(exc.args[0].str() if exc.args else exc)
    return None


def check_settings(c: Compose) -> list[str]:
    problems = []
    for name, s in services(c).items():
        for var, value in environment(s).items():
            if not var.startswith("ACCORD_"):
                continue
            if var.startswith(KAFKA_ENV_PREFIX):
                prop = kafka_property(var)
                refused = _unknown_kafka_property(prop, value)
                if refused:
                    problems.append(f"{name}: {var} is not a librdkafka setting ({refused})")
                elif prop in OWNED:  # Accord sets these itself and refuses them from the environment
                    problems.append(f"{name}: {var} is refused by Accord: {OWNED[prop]}")
            elif var not in SETTING_VARS:
                problems.append(f"{name}: {var} is not a setting of bus/settings.py")
    for name, s in accord_services(c).items():
        problems += [f"{name}: {p}" for p in _settings_problems(environment(s))]
    return problems


@pytest.fixture(autouse=True)
def _no_accord_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks read a service's environment only, never the one the tests run in."""
    for var in list(os.environ):
        if var.startswith("ACCORD_"):
            monkeypatch.delenv(var)


def _settings_problems(env: dict[str, str]) -> list[str]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("ACCORD_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("ACCORD_")})
    try:
        settings = Settings()
        TopicLayout.of(settings)
    except ValidationError as exc:
        return [f"ACCORD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
    except ValueError as exc:  # TopicLayoutError, or pydantic-settings refusing a JSON value
        return [str(exc)]
    finally:
        for k in env:
            if k.startswith("ACCORD_"):
                os.environ.pop(k, None)
        os.environ.update(saved)
    return []


def _depends_on(s: dict[str, Any]) -> dict[str, str]:
    deps = s.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}


def check_dependencies(c: Compose) -> list[str]:
    problems = []
    known = services(c)
    for name, s in known.items():
        for dep, condition in _depends_on(s).items():
            if dep not in known:
                problems.append(f"{name}: depends on {dep}, which is not a service")
                continue
            if condition not in DEPENDENCY_CONDITIONS:
                problems.append(f"{name}: depends on {dep} with unknown condition {condition}")
            if condition == "service_healthy" and "healthcheck" not in known[dep]:
                problems.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_completed_successfully" and known[dep].get("restart", "no") != "no":
                problems.append(f"{name}: waits for {dep} to complete, but {dep} restarts ({known[dep]['restart']})")
    return problems


def _listening_port(env: dict[str, str]) -> set[int]:
    """The HTTP ports an Accord service opens: the processor's health port, serve's API port."""
    ports = set()
    if env.get("ACCORD_HEALTH_PORT", "0") != "0":
        ports.add(port_of(env["ACCORD_HEALTH_PORT"]))
    if "ACCORD_API_PORT" in env or "ACCORD_HEALTH_PORT" not in env:
        ports.add(port_of(env.get("ACCORD_API_PORT", str(Settings.model_fields["api_port"].default))))
    return ports


def _prometheus_config(c: Compose) -> tuple[str, dict[str, Any]] | None:
    for name, s in services(c).items():
        if str(s.get("image", "")).startswith("prom/prometheus"):
            for volume in s.get("volumes") or []:
                source, _, target = str(volume).partition(":")
                if target.split(":")[0] == "/etc/prometheus/prometheus.yml":
                    return name, yaml.safe_load((COMPOSE_DIR / source).read_text())
    return None


def _scrape_targets(config: dict[str, Any]) -> Iterator[tuple[str, str, int, str]]:
    """(job, service, port, metrics path) for every static and DNS target."""
    for job in config.get("scrape_configs") or []:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                yield job["job_name"], host, int(port), path
        for dns in job.get("dns_sd_configs") or []:
            for host in dns.get("names") or []:
                yield job["job_name"], str(host), int(dns.get("port", 0)), path


def check_prometheus(c: Compose) -> list[str]:
    found = _prometheus_config(c)
    if found is None:
        return ["no prometheus service mounting a prometheus.yml"]
    _, config = found
    problems = []
    known = services(c)
    scraped = set()
    for job, host, port, path in _scrape_targets(config):
        if host not in known:
            problems.append(f"prometheus job {job}: {host} is not a service")
            continue
        env = environment(known[host])
        scraped.add(host)
        if port not in _listening_port(env):
            problems.append(
                f"prometheus job {job}: {host} does not listen on {port} (its environment opens "
                f"{sorted(_listening_port(env))})"
            )
        if env.get("ACCORD_API_HOST") != "0.0.0.0":
            problems.append(
                f"prometheus job {job}: {host} listens on ACCORD_API_HOST "
                f"{env.get('ACCORD_API_HOST', '127.0.0.1')}, out of Prometheus's reach"
            )
        if path != "/metrics":
            problems.append(f"prometheus job {job}: scrapes {path}, not /metrics")
    for name, s in accord_services(c).items():
        command = s.get("command") or []
        if (command[:2] == ["run", "processor"] or command[:1] == ["serve"]) and name not in scraped:
            problems.append(f"{name}: not scraped by Prometheus")
    for name, s in accord_services(c).items():
        test = " ".join(map(str, (s.get("healthcheck") or {}).get("test") or []))
        for port in re.findall(r"127\.0\.0\.1:(\d+)/", test):
            if int(port) not in _listening_port(environment(s)):
                problems.append(f"{name}: its healthcheck asks port {port}, where it does not listen")
    return problems


def _hostports(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        hostport = part.strip().split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        out.append((host, int(port)))
    return out


def check_kafka(c: Compose) -> list[str]:
    problems = []
    known = services(c)
    roles = {n: environment(s).get("KAFKA_PROCESS_ROLES", "") for n, s in known.items()}
    controllers = {n for n, r in roles.items() if "controller" in r.split(",")}
    brokers = {n for n, r in roles.items() if "broker" in r.split(",")}
    ids = [environment(known[n]).get("KAFKA_NODE_ID") for n in sorted(controllers | brokers)]
    if len(set(ids)) != len(ids):
        problems.append(f"KAFKA_NODE_ID values repeat: {ids}")
    for n in sorted(controllers | brokers):
        env = environment(known[n])
        voters = {}
        for voter in env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(","):
            node_id, _, hostport = voter.partition("@")
            voters[node_id] = _hostports(hostport)[0]
        expected = {
            environment(known[ctl])["KAFKA_NODE_ID"]: (
                ctl,
                _hostports(environment(known[ctl])["KAFKA_LISTENERS"])[0][1],
            )
            for ctl in controllers
        }
        if voters != expected:
            problems.append(f"{n}: KAFKA_CONTROLLER_QUORUM_VOTERS {voters} are not the controllers {expected}")
    if len(brokers) < 3 or len(controllers) < 3:
        problems.append(f"{len(controllers)} controllers and {len(brokers)} brokers; the topology has three of each")
    advertised = {hp for b in brokers for hp in _hostports(environment(known[b]).get("KAFKA_ADVERTISED_LISTENERS", ""))}
    for name, s in accord_services(c).items():
        env = environment(s)
        for hp in _hostports(env.get("ACCORD_BOOTSTRAP_SERVERS", "127.0.0.1:9092")):
            if hp not in advertised:
                problems.append(f"{name}: ACCORD_BOOTSTRAP_SERVERS names {hp[0]}:{hp[1]}, not a broker's listener")
        if "ACCORD_TOPIC_REPLICATION_FACTOR" in env:
            rf = int(env["ACCORD_TOPIC_REPLICATION_FACTOR"])
            isr = int(env.get("ACCORD_TOPIC_MIN_INSYNC_REPLICAS", "1"))
            if (rf, isr) != (3, 2):
                problems.append(f"{name}: topics replicated {rf} with min.insync.replicas {isr}, not 3 and 2")
            if rf > len(brokers):
                problems.append(f"{name}: replication factor {rf} with {len(brokers)} brokers")
    creators = [n for n, s in accord_services(c).items() if (s.get("command") or [])[:2] == ["topics", "create"]]
    if not creators:
        problems.append("no service runs `accord topics create`")
    return problems


def _db_user(url: str) -> str | None:
    return make_url(url).username if url else None


def check_roles(c: Compose) -> list[str]:
    problems = []
    known = services(c)
    pg = next((s for s in known.values() if str(s.get("image", "")).startswith("postgres:")), None)
    if pg is None:
        return ["no postgres service"]
    pg_env = environment(pg)
    owner, app = pg_env.get("DB_OWNER", "accord_owner"), pg_env.get("DB_APP", "accord_app")
    init_script = [v for v in pg.get("volumes") or [] if "docker-entrypoint-initdb.d" in str(v)]
    if not init_script:
        problems.append("postgres: no init script makes the owner and app roles")
    for name, s in accord_services(c).items():
        env = environment(s)
        command = s.get("command") or []
        user = _db_user(env.get("ACCORD_LEDGER_URL", ""))
        if user != app:
            problems.append(f"{name}: ACCORD_LEDGER_URL connects as {user}, not the application role {app}")
        if command[:2] == ["ledger", "init"]:
            if _db_user(env.get("ACCORD_LEDGER_OWNER_URL", "")) != owner:
                problems.append(f"{name}: `ledger init` must connect as the owner role {owner}")
            if env.get("ACCORD_LEDGER_APP_ROLE", app) != app:
                problems.append(f"{name}: grants {env['ACCORD_LEDGER_APP_ROLE']}, not the application role {app}")
        elif "ACCORD_LEDGER_OWNER_URL" in env:
            problems.append(f"{name}: holds the owner's URL; only `ledger init` may")
        if urlsplit(env.get("ACCORD_LEDGER_URL", "")).hostname not in known:
            problems.append(f"{name}: ACCORD_LEDGER_URL's host is not a service")
    if not any((s.get("command") or [])[:2] == ["ledger", "init"] for s in accord_services(c).values()):
        problems.append("no service runs `accord ledger init`")
    return problems


def check_files(c: Compose) -> list[str]:
    problems = []
    for name, s in services(c).items():
        for volume in s.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")) and not (COMPOSE_DIR / source).exists():
                problems.append(f"{name}: mounts {source}, which does not exist")
    return problems


CHECKS: dict[str, Check] = {
    "images": check_images,
    "commands": check_commands,
    "settings": check_settings,
    "dependencies": check_dependencies,
    "prometheus": check_prometheus,
    "kafka": check_kafka,
    "roles": check_roles,
    "files": check_files,
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_compose_file_passes(compose: Compose, check: str) -> None:
    assert CHECKS[check](compose) == []


def test_every_variable_it_needs_is_in_the_example_env() -> None:
    missing = required_variables(COMPOSE_FILE.read_text()) - set(env_example())
    assert missing == set()


def test_a_required_variable_left_out_stops_it() -> None:
    env = filled_example()
    del env["APP_PASSWORD"]
    with pytest.raises(KeyError, match="APP_PASSWORD"):
        interpolate(COMPOSE_FILE.read_text(), env)


def test_an_example_env_copied_but_not_filled_in_stops_it() -> None:
    """Every variable the file needs is empty in env.example, so a copy left as it is cannot start."""
    example = env_example()
    assert {name: example[name] for name in required_variables(COMPOSE_FILE.read_text())} == dict.fromkeys(
        required_variables(COMPOSE_FILE.read_text()), ""
    )
    with pytest.raises(KeyError):
        interpolate(COMPOSE_FILE.read_text(), example)


def test_the_topology_is_the_one_documented(compose: Compose) -> None:
    known = services(compose)
    assert {"controller-1", "controller-2", "controller-3", "kafka-1", "kafka-2", "kafka-3"} <= set(known)
    assert {"postgres", "ledger-init", "topics", "processor", "serve", "prometheus"} <= set(known)
    assert known["processor"]["command"] == ["run", "processor"] and known["processor"]["deploy"]["replicas"] >= 2
    assert str(known["controller-1"]["image"]).startswith("apache/kafka:")
    env = environment(known["topics"])
    assert (env["ACCORD_TOPIC_REPLICATION_FACTOR"], env["ACCORD_TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    assert env["ACCORD_TOPIC_PARTITIONS"]


# -- each check catches a broken copy -----------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    """A breakage that sets services.<path> (dotted) to ``value``; None deletes it."""

    def apply(c: Compose) -> None:
        node: Any = c["services"]
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return apply


BREAKAGES: list[tuple[str, str, Callable[[Compose], None]]] = [
    ("images", "an image on latest", _set("postgres.image", "postgres:latest")),
    ("images", "an image without a tag", _set("prometheus.image", "prom/prometheus")),
    ("images", "no image and no build", _set("kafka-1.image", None)),
    ("commands", "a command accord does not have", _set("processor.command", ["run", "procesor"])),
    ("commands", "an option accord does not have", _set("serve.command", ["serve", "--port", "8000"])),
    ("commands", "a command as one string", _set("topics.command", "topics create")),
    ("settings", "a variable that is no setting", _set("processor.environment.ACCORD_HEALTHPORT", "9100")),
    ("settings", "an unknown librdkafka property", _set("serve.environment.ACCORD_KAFKA_SSL_CA_LOCATON", "/ca.pem")),
    (
        "settings",
        "a librdkafka property Accord owns",
        _set("serve.environment.ACCORD_KAFKA_ENABLE_IDEMPOTENCE", "false"),
    ),
    ("settings", "a value the setting refuses", _set("processor.environment.ACCORD_HEALTH_PORT", "nine")),
    ("settings", "min.insync above the replication", _set("topics.environment.ACCORD_TOPIC_MIN_INSYNC_REPLICAS", 4)),
    ("settings", "partitions for no event type", _set("topics.environment.ACCORD_TOPIC_PARTITIONS", '{"custdy": 8}')),
    (
        "dependencies",
        "a dependency on no service",
        _set("serve.depends_on.ledger-setup", {"condition": "service_started"}),
    ),
    (
        "dependencies",
        "healthy without a healthcheck",
        _set("prometheus.depends_on", {"ledger-init": {"condition": "service_healthy"}}),
    ),
    ("dependencies", "completed but restarting", _set("ledger-init.restart", "unless-stopped")),
    ("prometheus", "the wrong metrics port", _set("processor.environment.ACCORD_HEALTH_PORT", 9200)),
    ("prometheus", "a scraped service on localhost", _set("serve.environment.ACCORD_API_HOST", "127.0.0.1")),
    ("kafka", "a voter that is no controller", _set("controller-2.environment.KAFKA_NODE_ID", 7)),
    ("kafka", "bootstrap at no broker", _set("processor.environment.ACCORD_BOOTSTRAP_SERVERS", "kafka-1:9092")),
    ("kafka", "replication 1", _set("topics.environment.ACCORD_TOPIC_REPLICATION_FACTOR", 1)),
    ("kafka", "a broker fewer", _set("kafka-3", None)),
    (
        "roles",
        "the processor as the owner",
        _set("processor.environment.ACCORD_LEDGER_URL", "postgresql+psycopg://accord_owner:x@postgres:5432/accord"),
    ),
    (
        "roles",
        "init as the app role",
        _set(
            "ledger-init.environment.ACCORD_LEDGER_OWNER_URL", "postgresql+psycopg://accord_app:x@postgres:5432/accord"
        ),
    ),
    (
        "roles",
        "serve holding the owner's URL",
        _set("serve.environment.ACCORD_LEDGER_OWNER_URL", "postgresql+psycopg://accord_owner:x@postgres:5432/accord"),
    ),
    (
        "files",
        "a mount of a file that is not there",
        _set("prometheus.volumes", ["./prometheus/missing.yml:/etc/x.yml:ro"]),
    ),
]


@pytest.mark.parametrize(("check", "what", "breakage"), BREAKAGES, ids=[f"{c}: {w}" for c, w, _ in BREAKAGES])
def test_each_check_catches_a_broken_copy(
    compose: Compose, check: str, what: str, breakage: Callable[[Compose], None]
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert CHECKS[check](broken) != [], f"{check} did not notice {what}"


def test_every_check_has_a_breakage() -> None:
    assert {c for c, _, _ in BREAKAGES} == set(CHECKS)


def test_a_broken_copy_of_the_text_is_caught_too(tmp_path: Path) -> None:
    """The same checks on the file's text with one line changed, as an editor would break it."""
    text = COMPOSE_FILE.read_text()
    assert 'command: ["run", "processor"]' in text
    broken = load(text.replace('command: ["run", "processor"]', 'command: ["run", "processors"]'))
    assert check_commands(broken) == ["processor: `accord run processors` does not parse"]


# -- the commands docs/production.md gives an operator -----------------------------------------

PRODUCTION_DOC = COMPOSE_DIR.parent / "docs" / "production.md"
_RUN = re.compile(r"docker compose -f compose/compose\.yaml run --rm (?P<service>[\w-]+)(?P<args>[^`\n]*)")
_IMAGE_RUN = re.compile(r"accord:0\.1\.0 \\?\s*(?P<args>ledger [^`\n]*)")


def doc_commands(text: str) -> list[tuple[str, list[str]]]:
    """(service, accord arguments) of every `docker compose run --rm SERVICE ...` and `docker run ... accord:...`."""
    found = [(m["service"], m["args"].split()) for m in _RUN.finditer(text)]
    found += [("(image)", m["args"].split()) for m in _IMAGE_RUN.finditer(text)]
    return found


def check_doc_commands(c: Compose, text: str) -> list[str]:
    problems = []
    known = services(c)
    for service, args in doc_commands(text):
        if service != "(image)" and service not in known:
            problems.append(f"docs/production.md runs service {service}, which compose.yaml does not have")
            continue
        if service != "(image)" and not args:
            args = list(known[service].get("command") or [])
        if service != "(image)" and not is_accord(known[service]):
            continue
        try:
            build_parser().parse_args(args)
        except SystemExit:
            problems.append(f"docs/production.md: `accord {' '.join(args)}` does not parse")
    return problems


def test_the_production_page_runs_real_services_and_commands(compose: Compose) -> None:
    text = PRODUCTION_DOC.read_text()
    commands = doc_commands(text)
    assert len(commands) >= 5  # ledger-init, topics, agreements publish, ledger verify, keygen
    assert check_doc_commands(compose, text) == []
    for image in {str(s["image"]) for s in services(compose).values() if "image" in s}:
        name = image.split(":")[0]
        for used in re.findall(rf"{re.escape(name)}:[\w.-]+", text):
            assert used == image, f"docs/production.md names {used}; compose.yaml runs {image}"


def test_a_broken_command_on_the_production_page_is_caught(compose: Compose) -> None:
    text = PRODUCTION_DOC.read_text().replace("ledger verify --from-topic", "ledger verify --from-topics")
    assert check_doc_commands(compose, text) == [
        "docs/production.md: `accord ledger verify --from-topics` does not parse"
    ]
    text = PRODUCTION_DOC.read_text().replace("run --rm topics", "run --rm topic")
    assert "docs/production.md runs service topic, which compose.yaml does not have" in check_doc_commands(
        compose, text
    )
