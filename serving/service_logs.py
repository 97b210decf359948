"""What the service's log shows at BentoML's default level.

Two problems with BentoML 1.4.39's logging, fixed in every worker when the service starts:

* BentoML logs every request it rejects before our code runs (a body that does not match the
  endpoint's schema) with ``log_exception``: at ERROR, with a full traceback. A client's mistake
  is not the service's error; ``ClientErrorsAsWarnings`` turns those records into one WARNING
  line that names the endpoint and the problem.
* Its server logging configuration shows only WARNING and above from loggers other than its own,
  so a model swap or the service degrading (logged at INFO by ``nextbest.serving``) was never
  seen. ``show_service_logs`` lets the ``nextbest`` loggers through at INFO.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"
"""Where BentoML's ``log_exception`` writes (1.4.39)."""


class ClientErrorsAsWarnings(logging.Filter):
    """A record of a rejected request (a pydantic ValidationError or a 4xx BentoML error)
    becomes a one-line WARNING; everything else passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _client_error(error):
            return True
        summary = _summary(error)
        record.msg = "rejected a request to %s [%s]: %s"
        record.args = (*(record.args or ())[:2], summary[:500])
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _summary(error: BaseException) -> str:
    """The problems in one line; for a schema mismatch the fields and messages, not the values
    sent (which may be personal data)."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                         for e in error.errors(include_url=False))
    return " ".join(str(error).split())


def _client_error(error: BaseException) -> bool:
    if isinstance(error, ValidationError):
        return True
    return isinstance(error, BentoMLException) and int(error.error_code) < 500


def show_service_logs() -> None:
    """Apply both fixes in this process (idempotent)."""
    requests = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorsAsWarnings) for f in requests.filters):
        requests.addFilter(ClientErrorsAsWarnings())
    ours = logging.getLogger("nextbest")
    ours.disabled = False
    ours.setLevel(logging.INFO)
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("nextbest.") and isinstance(logger, logging.Logger):
            logger.disabled = False  # dictConfig disables loggers that existed before it ran
