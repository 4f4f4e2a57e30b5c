# The image a Prefect docker work pool runs: the project installed exactly as the README does
# (`make install`), with the built-in encoder built at image build time (no downloads at run time).
FROM python:3.11-slim

ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    PENULTIMATE_HOME=/app/artifacts \
    PATH=/app/.venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app

WORKDIR /app
COPY --chown=app:app . /app
USER app

RUN make install \
    && penultimate build-encoder \
    && penultimate server stop
