"""Logging for operators: one line per state transition, text or JSON, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            # exc_text first: _Redact leaves the traceback there with secrets removed.
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(doc, sort_keys=True)


class _Redact(logging.Filter):
    """Defence in depth: no code path logs a token on purpose, this catches accidents."""

    def __init__(self, secrets: Callable[[], Iterable[str | None]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for s in self._secrets() if s and len(s) >= 4]
        message = record.getMessage()
        redacted = _without(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # A worker's failure is logged with its traceback; the exception's text is as
            # likely to carry an accident as the message. Formatters use exc_text when set.
            record.exc_text = _without(_TRACEBACKS.formatException(record.exc_info), secrets)
        return True


_TRACEBACKS = logging.Formatter()


def _without(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def setup(fmt: str = "text", level: str = "info",
          secrets: Callable[[], Iterable[str | None]] = lambda: ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Workers run under sidecar.supervision; any other thread that dies still says so in the
    # configured format, not as a bare traceback on stderr.
    threading.excepthook = _log_thread_death
    # requests/urllib3 log URLs at debug; keep them quiet unless asked for.
    logging.getLogger("urllib3").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("katalog").error(
        "thread %s died: %s: %s", name, args.exc_type.__name__, args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
