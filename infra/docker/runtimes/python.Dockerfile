# Run image for Python tasks (languages.python.image): the official image, as uid 65534.
#   docker build -f infra/docker/runtimes/python.Dockerfile -t coderun/run-python:3.12 infra/docker/runtimes
# The Job adds the rest (read-only root, no capabilities, its own uid again); nothing else here.
FROM python:3.12.7-slim-bookworm
# The code folder may be read-only; no .pyc files next to the user's code.
ENV PYTHONDONTWRITEBYTECODE=1
USER 65534:65534
