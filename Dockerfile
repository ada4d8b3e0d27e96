# syntax=docker/dockerfile:1
# Build: docker build -t inference-router .
# Run:   docker run -p 8080:8080 -v $PWD/my.yaml:/etc/inference-router/router.yaml:ro inference-router

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/router
COPY pyproject.toml constraints.txt README.md ./
COPY router ./router
RUN /opt/router/bin/pip install -c constraints.txt .

FROM python:3.11-slim
ENV PATH=/opt/router/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin router
COPY --from=build /opt/router /opt/router
COPY policies/default.yaml /etc/inference-router/router.yaml
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=1).status != 200)"]
ENTRYPOINT ["inference-router"]
CMD ["serve", "--config", "/etc/inference-router/router.yaml", "--host", "0.0.0.0", "--port", "8080"]
