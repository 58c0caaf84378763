# The fabric's own processes (worker, sink, router) in one small image.
#   docker build -t context-fabric .
#   docker run --rm context-fabric --help
# Stage 1 builds the wheel and installs it with its dependencies into a virtualenv;
# stage 2 copies only that virtualenv onto a slim Python, and runs as a non-root user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fabric ./fabric
RUN python -m venv /opt/fabric \
 && /opt/fabric/bin/pip wheel --no-deps -w /wheels . \
 && /opt/fabric/bin/pip install /wheels/context_fabric-*.whl

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fabric --create-home fabric
COPY --from=build /opt/fabric /opt/fabric
ENV PATH=/opt/fabric/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    FABRIC_DATA_DIR=/var/lib/fabric \
    FABRIC_ROUTER__HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/fabric
EXPOSE 8700 8701
# the router answers /healthz; worker and sink are checked by their compose health checks
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/healthz', timeout=2)"]
ENTRYPOINT ["fabric"]
CMD ["router"]
