# vast-scheduler: slim Python, non-root, config mounted at /etc/vast-scheduler/config.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
COPY config ./config
# uvloop comes with the package's dependencies on Linux; the daemon uses it when present.
RUN pip install . && python -c "import uvloop, scheduler"

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin scheduler \
    && mkdir -p /etc/vast-scheduler \
    && cp config/local.yaml /etc/vast-scheduler/config.yaml
USER scheduler

EXPOSE 8080
ENV VAST_SCHEDULER_PORT=8080 \
    VAST_SCHEDULER_HOST=0.0.0.0
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; port=os.environ.get('VAST_SCHEDULER_PORT','8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

# Mount your own file over /etc/vast-scheduler/config.yaml (it must listen on 0.0.0.0 to be
# reachable from outside the container); pass secrets such as VAST_API_KEY as environment.
ENTRYPOINT ["vast-scheduler"]
CMD ["run", "--config", "/etc/vast-scheduler/config.yaml"]
