"""structlog setup: JSON in production, key-value in a terminal, for every line the process writes.

Invariant I6: nothing personal is ever logged. Log event ids, topics, counts and
reasons; never subject keys, names, NHS numbers or record bodies.

One path for every line: structlog's own loggers and the standard library's (uvicorn,
SQLAlchemy, psycopg, librdkafka through confluent-kafka's ``logger`` setting, warnings)
end in one handler on the root logger whose ``ProcessorFormatter`` renders them alike, so
with ``ACCORD_LOG_FORMAT=json`` each line on stderr is one JSON object with at least
``timestamp``, ``level``, ``event`` and ``logger``. What a library's record may carry is
held to I6 here too:

- an exception in a record becomes its kind and where it was raised (``error``, ``where``):
  an exception's text can quote a value; ``ACCORD_LOG_LEVEL=DEBUG`` adds the traceback;
- SQLAlchemy's loggers stay at WARNING whatever the level, so statements are never logged
  (its engines hide parameters anyway: ``hide_parameters=True`` in bus/database.py);
- an uncaught exception, in the main thread or another, is logged the same way, never
  printed as a plain traceback.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bus.settings import PACKAGE_ROOT, Settings

__all__ = ["configure_logging", "error_line", "json_requested", "where_raised"]

_state: dict[str, Any] = {"json_requested": False, "debug": False}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (a test harness may swap it), not the one at set-up."""

    accord = True

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def where_raised(tb: TracebackType | None) -> str:
    """``file:line`` of the innermost frame in Accord's own code, else the innermost frame (no value: safe to log)."""
    frames = traceback.extract_tb(tb)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    for frame in frames:
        path = Path(frame.filename)
        if path.is_relative_to(PACKAGE_ROOT) and ".venv" not in path.parts and "site-packages" not in path.parts:
            where = f"{path.relative_to(PACKAGE_ROOT)}:{frame.lineno}"
    return where


def _exception_summary(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """``exc_info`` -> ``error`` (its kind) and ``where``; the traceback only at DEBUG (it can quote values)."""
    info = event_dict.pop("exc_info", None)
    event_dict.pop("stack_info", None)
    if not info:
        return event_dict
    if isinstance(info, BaseException):
        exc: BaseException | None = info
    elif isinstance(info, tuple):
        exc = info[1]
    else:
        exc = sys.exc_info()[1]
    if exc is None:
        return event_dict
    exc_type, tb = type(exc), exc.__traceback__
    event_dict.setdefault("error", exc_type.__name__)
    event_dict.setdefault("where", where_raised(tb))
    if _state["debug"]:
        event_dict["exception"] = "".join(traceback.format_exception(exc_type, exc, tb))
    return event_dict


def _librdkafka_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A librdkafka line (``FAC [client] [thrd:...]: text``) as ``event`` text plus ``facility`` and ``client``."""
    args = event_dict.pop("positional_args", None)  # the formatter's copy of the record's args
    record = event_dict.get("_record")
    if record is None or record.name != "librdkafka":
        return event_dict
    if isinstance(args, tuple) and len(args) == 3:
        facility, client, text = (str(a) for a in args)
        if text.startswith("[thrd:") and "]: " in text:
            text = text.split("]: ", 1)[1]
        event_dict.update(event=text, facility=facility, client=client)
    return event_dict


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, **where: Any) -> None:
    structlog.get_logger("accord").critical("uncaught_exception", exc_info=(exc_type, exc, tb), **where)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _log_uncaught(exc_type, exc, tb)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _log_uncaught(
        args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback, thread=getattr(args.thread, "name", "?")
    )


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library's logging to one stderr handler, rendered as ``log_format`` says.

    1. pick the renderer: JSON, or key-value for a terminal (``auto``: by whether stderr is one);
    2. structlog's loggers hand their event dicts to the standard library (named, so ``logger`` is set);
    3. one handler on the root logger renders both kinds with the same processors, and every
       logger made before now hands its records to it (no handlers, levels or propagate=False
       of its own);
    4. levels: the root at ``ACCORD_LOG_LEVEL``; SQLAlchemy at WARNING; librdkafka at DEBUG when
       ``ACCORD_KAFKA_DEBUG`` asked for its debug lines;
    5. warnings, and uncaught exceptions of every thread, go through logging too.
    """
    # 1.
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    named = logging.getLevelName(settings.log_level.upper())
    level = named if isinstance(named, int) else logging.INFO
    _state.update(json_requested=settings.log_format == "json", debug=level <= logging.DEBUG)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # 2.
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # 3.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _librdkafka_fields],
        pass_foreign_args=True,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _exception_summary, renderer],
    )
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "accord", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # A library that configured its loggers before us (uvicorn's dictConfig, say) gave them
    # handlers of their own, propagate=False or a level: undone, so every record reaches the
    # one handler above and ACCORD_LOG_LEVEL governs it.
    for existing in list(logging.root.manager.loggerDict.values()):
        if isinstance(existing, logging.Logger):
            for old in list(existing.handlers):
                existing.removeHandler(old)
            existing.propagate = True
            existing.setLevel(logging.NOTSET)
    # 4.
    logging.getLogger("sqlalchemy").setLevel(max(level, logging.WARNING))
    logging.getLogger("librdkafka").setLevel(logging.DEBUG if settings.kafka.get("debug") else logging.NOTSET)
    # 5.
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def json_requested() -> bool:
    """Whether ACCORD_LOG_FORMAT=json was asked for explicitly (not ``auto`` on a pipe)."""
    return bool(_state["json_requested"])


def error_line(line: str, exc: BaseException | None = None) -> None:
    """A command's last word: the one line a person reads, or, when JSON was asked for, one JSON log line.

    A person at a terminal and a script reading stderr keep the plain line (``auto`` on a pipe
    too); a log shipper that asked for JSON (``ACCORD_LOG_FORMAT=json``, as a service runs)
    gets every line as JSON, this one included, with the error's kind and where (never its text).
    """
    if not json_requested():
        print(line, file=sys.stderr)
        return
    log = structlog.get_logger("accord.cli")
    if exc is not None:
        log.error("command_failed", message=line, exc_info=exc)
    else:
        log.error("command_failed", message=line)
