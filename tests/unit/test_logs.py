"""bus.logs: every line the process writes, structlog's or the standard library's, rendered alike (no services).

With ACCORD_LOG_FORMAT=json each line on stderr is one JSON object with timestamp, level,
event and logger; an exception is its kind and where, never its text (I6), unless
ACCORD_LOG_LEVEL=DEBUG asked for the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bus.kafka import LOGGER as KAFKA_LOGGER
from bus.logs import configure_logging, error_line
from bus.settings import Settings

NHS = "9434765919"  # synthetic, passes Modulus 11: stands for personal data an exception might quote
KEYS = {"timestamp", "level", "event", "logger"}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook)
    levels = {name: logging.getLogger(name).level for name in ("sqlalchemy", "librdkafka")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def _boom() -> None:
    raise ValueError(f"subject {NHS} refused")


BOOM_AT = f"tests/unit/test_logs.py:{_boom.__code__.co_firstlineno + 1}"


def test_every_kind_of_line_is_one_json_object_with_the_same_keys(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    structlog.get_logger("accord.test").info("batch_done", events=3)
    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)
    logging.getLogger("sqlalchemy.pool").error("pool trouble")
    KAFKA_LOGGER.error(
        "%s [%s] %s", "FAIL", "rdkafka#consumer-2", "[thrd:127.0.0.1:9092/bootstrap]: Connection refused"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    lines = _json_lines(capsys.readouterr().err)
    assert [line["logger"] for line in lines] == [
        "accord.test",
        "uvicorn.error",
        "sqlalchemy.pool",
        "librdkafka",
        "py.warnings",
    ]
    for line in lines:
        assert set(line) >= KEYS, line
    assert lines[0]["event"] == "batch_done" and lines[0]["events"] == 3 and lines[0]["level"] == "info"
    assert lines[1]["event"] == "Started server process [42]" and lines[1]["level"] == "warning"
    kafka = lines[3]
    assert kafka["event"] == "Connection refused" and kafka["level"] == "error"
    assert kafka["facility"] == "FAIL" and kafka["client"] == "rdkafka#consumer-2"
    assert "an old API" in lines[4]["event"]


def test_an_exception_is_its_kind_and_where_not_its_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    try:
        _boom()
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        structlog.get_logger("accord.test").exception("handler_failed")
    err = capsys.readouterr().err
    assert NHS not in err and "Traceback" not in err
    for line in _json_lines(err):
        assert line["error"] == "ValueError" and line["where"] == BOOM_AT
        assert "exception" not in line


def test_debug_adds_the_traceback_inside_the_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json", log_level="DEBUG"))
    try:
        _boom()
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    [line] = _json_lines(capsys.readouterr().err)
    assert line["exception"].startswith("Traceback") and "_boom" in line["exception"]


def test_an_uncaught_exception_in_any_thread_is_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    try:
        _boom()
    except ValueError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    worker = threading.Thread(target=_boom, name="db-watchdog")
    worker.start()
    worker.join()
    err = capsys.readouterr().err
    assert NHS not in err and "Traceback" not in err
    main, thread = _json_lines(err)
    assert main["event"] == thread["event"] == "uncaught_exception"
    assert main["level"] == "critical" and main["error"] == "ValueError"
    assert thread["thread"] == "db-watchdog" and thread["where"] == BOOM_AT


def test_sqlalchemy_never_logs_statements_even_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json", log_level="DEBUG"))
    engine_log = logging.getLogger("sqlalchemy.engine.Engine")
    assert not engine_log.isEnabledFor(logging.INFO)
    engine_log.info("SELECT * FROM consent WHERE subject_key = %s", NHS)
    structlog.get_logger("accord.test").debug("debug_shown")
    err = capsys.readouterr().err
    assert NHS not in err and "debug_shown" in err


def test_librdkafka_debug_lines_show_only_when_asked_for() -> None:
    configure_logging(Settings(log_format="json"))
    assert not KAFKA_LOGGER.isEnabledFor(logging.DEBUG)
    configure_logging(Settings(log_format="json", kafka={"debug": "conf"}))
    assert KAFKA_LOGGER.isEnabledFor(logging.DEBUG)


def test_the_level_filters_library_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json", log_level="WARNING"))
    logging.getLogger("uvicorn.error").info("hidden")
    structlog.get_logger("accord.test").info("hidden too")
    logging.getLogger("uvicorn.error").warning("shown")
    assert [line["event"] for line in _json_lines(capsys.readouterr().err)] == ["shown"]


def test_configuring_twice_leaves_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    configure_logging(Settings(log_format="json"))
    logging.getLogger("x").warning("once")
    assert len(_json_lines(capsys.readouterr().err)) == 1


def test_the_console_format_stays_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="console"))
    structlog.get_logger("accord.test").info("batch_done", events=3)
    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)
    first, second = capsys.readouterr().err.splitlines()
    assert not first.startswith("{") and "batch_done" in first and "events=3" in first and "[accord.test]" in first
    assert "Started server process [42]" in second and "[uvicorn.error]" in second and "warning" in second


def test_a_commands_last_line_is_plain_unless_json_was_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="auto"))  # a pipe here, so auto renders JSON; the person's line stays plain
    error_line("accord run: no Kafka broker answered")
    assert capsys.readouterr().err == "accord run: no Kafka broker answered\n"
    configure_logging(Settings(log_format="json"))
    try:
        _boom()
    except ValueError as exc:
        error_line("accord run: unexpected error (ValueError)", exc)
    [line] = _json_lines(capsys.readouterr().err)
    assert line["event"] == "command_failed" and line["message"] == "accord run: unexpected error (ValueError)"
    assert line["level"] == "error" and line["error"] == "ValueError" and NHS not in json.dumps(line)


def test_loggers_a_library_configured_first_still_come_out_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    import logging.config

    import uvicorn.config

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # handlers, levels and propagate=False of its own
    logging.getLogger("uvicorn.error").setLevel(logging.DEBUG)
    configure_logging(Settings(log_format="json", log_level="WARNING"))
    logging.getLogger("uvicorn.error").info("hidden")
    logging.getLogger("uvicorn.error").warning("shown")
    err = capsys.readouterr().err
    assert [line["event"] for line in _json_lines(err)] == ["shown"], err
