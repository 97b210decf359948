"""Where BentoML 1.4 (and the asyncio and glibc underneath it, and nats-py under the stream
consumer) does not do what nextbest needs, and what it does instead: each in its own module,
apart from the domain code, which calls them in one place each (``serving/service.py``; the
stream consumer, ``serving/stream.py``). Each says what it works around;
here is which version needs it and how to tell that it can go.

* ``accepting`` — every worker of a service shares one listening socket, and asyncio's selector
  loop accepts the whole queue on each wake-up, so one worker takes a client's every
  keep-alive connection (bentoml/BentoML#5426). Needed with BentoML 1.4 on the selector loop
  (no uvloop). It can go when ``tests/test_accepting.py``'s spread test passes with
  ``accept_one_connection_per_turn`` left out, or when BentoML gives each worker its own socket
  (``SO_REUSEPORT``).
* ``timeouts`` — BentoML 1.4's ``TimeoutMiddleware`` never cancels a request's timer, so every
  answered request stays alive for the whole timeout. It can go when that middleware cancels
  its timer (look for ``cancel`` in ``bentoml/_internal/server/http/traffic.py``) and
  ``tests/test_timeouts.py``'s object count holds without ``cancel_timers_when_answered``.
* ``huge_pages`` — pymalloc's arenas are never marked for transparent huge pages; the fix is
  two environment variables set in each worker (``PYTHONMALLOC=malloc``,
  ``glibc.malloc.hugetlb=1``, glibc 2.35+). It can go when CPython marks its arenas (a
  ``madvise(MADV_HUGEPAGE)`` in ``Objects/obmalloc.c``) and ``huge_page_share`` in a worker's
  log stays high without the settings.
* ``http_errors`` — Starlette under BentoML 1.4 answers an unknown path (404) and a wrong method
  (405) in plain text, and BentoML reads a form-encoded body as a form. It can go when those
  answers are JSON in ``tests/test_service.py``'s unknown-path test with ``JsonErrors`` removed.
* ``jetstream_fetch`` — nats-py 2.16's ``fetch`` makes a UUID, a task and a ``wait_for`` per
  message, more work than validating and storing the event; ``BatchPuller`` sends the same
  pull request to a subscription that only collects. It can go when ``Subscription.next_msg``
  no longer calls ``create_task`` and ``bench/bench_stream.py`` keeps its rate with nats-py's
  ``fetch`` in its place.
* ``validation_errors`` — BentoML 1.4 answers a body that fails the request model with
  pydantic's errors minus the values sent. It can go when BentoML's 400 names each field and
  value (``tests/test_service.py``'s schema-mismatch tests pass without
  ``ReadableValidationErrors``).
"""
