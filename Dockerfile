# The nextbest image: the API (default command), the background worker (`nextbest worker`),
# the stream consumer (`nextbest events consume`), the training jobs, and an MLflow tracking
# server with the PostgreSQL driver (`mlflow server ...`), all from one image so that every
# process runs the same code and settings. docker-compose.yaml and deploy/kubernetes/ use it.
#
#   docker build -t nextbest:0.1.0 .
#
# Models are not baked in: the API resolves the serving alias (NEXTBEST_SERVING_ALIAS) in the
# MLflow registry (NEXTBEST_TRACKING_URI) at start and follows it, so promoting or rolling back
# needs no rebuild. The warehouse, the embedded stores and the serving cache live under
# NEXTBEST_DATA_DIR (/data, a volume). See docs/deploy.md.
FROM python:3.11-slim-bookworm

# libgomp: LightGBM's OpenMP runtime; nothing else is needed beyond the wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NEXTBEST_DATA_DIR=/data \
    NEXTBEST_HOST=0.0.0.0 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /app
# Dependencies first, so that a change to the code reuses the layer that installs them.
COPY pyproject.toml README.md ./
RUN mkdir -p features training serving \
    && touch features/__init__.py training/__init__.py serving/__init__.py \
    && pip install . \
    && pip uninstall -y nextbest \
    && rm -rf features training serving
COPY features ./features
COPY training ./training
COPY serving ./serving
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 nextbest \
    && mkdir -p /data && chown nextbest /data

USER nextbest
VOLUME ["/data"]
EXPOSE 3000

HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=2)"

CMD ["bentoml", "serve", "serving.service:NextBest", "--host", "0.0.0.0", "--port", "3000"]
