# One image for the web, the worker and beat. Its argument names the Procfile line to run:
#   docker run IMAGE web | worker | beat      (the Procfile's line, as written)
#   docker run --entrypoint python IMAGE manage.py migrate --no-input
# Configuration comes from the environment only (README "Configuration"); compose.yaml
# shows a whole stack.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
# The dependencies first, from pyproject.toml alone, so a code change rebuilds only what
# follows (the project itself installs no package: the code runs from /app).
COPY pyproject.toml /src/pyproject.toml
RUN /opt/venv/bin/pip install /src
COPY . /app
# Static files are collected into the image. Settings need their variables to load; these
# are placeholders for this one command, not used by anything the image runs.
RUN cd /app && env \
      SECRET_KEY=collectstatic-only \
      REQRUN_ENCRYPTION_KEYS="$(/opt/venv/bin/python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
      DATABASE_URL=postgres://unused@127.0.0.1:1/unused \
      REDIS_URL=redis://127.0.0.1:1/0 \
      EMAIL_URL=dummymail:// \
      /opt/venv/bin/python manage.py collectstatic --no-input \
    && /opt/venv/bin/python -m compileall -q /app

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 reqrun \
    && useradd --system --uid 10001 --gid reqrun --home-dir /app --shell /usr/sbin/nologin reqrun \
    && mkdir -p /var/lib/reqrun/metrics \
    && chown reqrun:reqrun /var/lib/reqrun/metrics
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000
WORKDIR /app
USER reqrun
EXPOSE 8000
ENTRYPOINT ["python", "-m", "devstack", "proc"]
CMD ["web"]
