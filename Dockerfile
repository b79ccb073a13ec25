# The elastask image: worker, beat, Flower, the CLI and the Kibana simulator.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py elastask.yaml ./
COPY elastask ./elastask
COPY elastask_bed ./elastask_bed
RUN pip install --no-cache-dir ".[bed]" && useradd --create-home elastask
USER elastask
ENV ELASTASK_CONFIG=/app/elastask.yaml
CMD ["celery", "-A", "elastask", "worker", "-l", "info"]
