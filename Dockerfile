# The opscentre image: `docker build -t opscentre:0.1.0 .` (docker-compose.yml builds it too).
# Two stages: packages are installed into a virtual environment in the first, and only that
# environment is copied into the second, so nothing used to build lands in the image (pip,
# setuptools and wheel are removed from it too). Every package is pinned in requirements.lock,
# which tests/test_stack.py checks against pyproject.toml.

FROM python:3.11.15-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/opscentre
COPY requirements.lock /tmp/requirements.lock
# --no-deps: the lock is the whole set; pip check proves nothing is missing from it.
RUN /opt/opscentre/bin/pip install --no-deps --requirement /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY opscentre /src/opscentre
COPY producers /src/producers
COPY streams /src/streams
COPY sinks /src/sinks
COPY dashboards /src/dashboards
RUN /opt/opscentre/bin/pip install --no-deps /src \
 && /opt/opscentre/bin/pip check \
 && /opt/opscentre/bin/pip uninstall --yes pip setuptools wheel

FROM python:3.11.15-slim-trixie
LABEL org.opencontainers.image.title="opscentre" \
      org.opencontainers.image.description="Streaming pipeline for a provincial operations centre" \
      org.opencontainers.image.licenses="Apache-2.0"
# The interpreter's own pip, setuptools and wheel go too: the image installs nothing at run time.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid 10001 opscentre \
 && useradd --system --uid 10001 --gid opscentre --home-dir /var/lib/opscentre --create-home \
            --shell /usr/sbin/nologin opscentre \
 && mkdir /var/lib/opscentre/generated \
 && chown opscentre:opscentre /var/lib/opscentre/generated
COPY --from=build /opt/opscentre /opt/opscentre
ENV PATH=/opt/opscentre/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPSCENTRE_METRICS_ADDR=0.0.0.0:9108
USER 10001:10001
WORKDIR /var/lib/opscentre
EXPOSE 9108
ENTRYPOINT ["opscentre"]
CMD ["--help"]
