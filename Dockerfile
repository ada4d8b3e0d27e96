# syntax=docker/dockerfile:1
# Build: docker build -t inference-router:0.1.0 .
# Run:   docker run -p 8080:8080 -v $PWD/my.yaml:/etc/inference-router/router.yaml:ro inference-router:0.1.0
# The router listens where the config's server.listen says (policies/default.yaml: 0.0.0.0:8080).
# Linted by hadolint in `make lint`.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/router
COPY pyproject.toml constraints.txt README.md ./
COPY router ./router
# every dependency ships a wheel: no compiler here either; pip itself stays behind in this stage
RUN /opt/router/bin/pip install -c constraints.txt . \
 && /opt/router/bin/pip uninstall --yes pip

FROM python:3.11-slim
ENV PATH=/opt/router/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ROUTER_CONFIG=/etc/inference-router/router.yaml
# no package manager tooling in the final image: the base image's pip, setuptools and wheel go too
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin router \
 && mkdir -p /var/lib/inference-router \
 && chown 10001:10001 /var/lib/inference-router
COPY --from=build /opt/router /opt/router
COPY policies/default.yaml /etc/inference-router/router.yaml
# the state folder (a volume in compose, an emptyDir in Kubernetes): the root filesystem can be read-only
WORKDIR /var/lib/inference-router
VOLUME ["/var/lib/inference-router"]
USER 10001:10001
EXPOSE 8080
# probes the address the config listens on (server.listen), whatever the config mounted
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; from router.config import load_config; s = load_config(os.environ['ROUTER_CONFIG']).server; host = '127.0.0.1' if s.host in ('0.0.0.0', '::', '') else s.host; urllib.request.urlopen(f'http://{host}:{s.port}/healthz', timeout=2)"]
ENTRYPOINT ["inference-router"]
CMD ["serve"]
