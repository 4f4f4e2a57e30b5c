# The image a Prefect docker work pool runs (prefect.docker.yaml): the project installed exactly as
# the README does (`make install`), with the built-in encoder built at image build time, so a flow
# run downloads nothing. Build from the repository root: docker build -t penultimate:0.1.0 .
FROM python:3.11-slim-bookworm

# No pip or uv download cache: it would only add the wheels (TensorFlow's among them) to the image.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    PENULTIMATE_HOME=/app/artifacts \
    PATH=/app/.venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app \
    && install -d -o 1000 -g 1000 /app

WORKDIR /app
COPY --chown=1000:1000 . /app
USER 1000:1000

# The local Prefect server that build-encoder starts is stopped and dropped: flow runs report to
# the work pool's API instead.
RUN make install \
    && penultimate build-encoder \
    && penultimate server stop \
    && rm -rf .cache/prefect-server
