# clipperd on CPUs. Build and run: docs/deploy.md, "Images".
#   docker build -t clipperd:cpu .
#   docker run --rm -p 8000-8002:8000-8002 -v "$PWD/model_repository:/models:ro" clipperd:cpu
# Build arguments:
#   BASE             any Debian or Ubuntu image; Python 3.11 or newer comes from the base or, where
#                    it has none, from the distribution's packages (Debian 12: 3.11, Ubuntu 24.04: 3.12)
#   EXTRAS           the frameworks, as pyproject.toml's extras: torch, onnx, tensorflow, sklearn,
#                    xgboost, spark (spark also needs APT_PACKAGES=openjdk-17-jre-headless); empty: none
#   APT_PACKAGES     more distribution packages for the final image
#   TORCH_INDEX_URL  where PyTorch's CPU build lies (PyPI's torch for Linux is the CUDA one, GBs);
#                    empty: PyPI and PIP_FIND_LINKS only
#   PIP_CERT, PIP_FIND_LINKS  pip behind a proxy with its own CA, or with a local wheel folder:
#                    paths inside the build (bind-mount them); used by the builder stage only
ARG BASE=python:3.11-slim-bookworm

# ---- runtime: the base, Python, user 1000, the repository and cache folders
# checkov:skip=CKV_DOCKER_7:the base is the BASE build argument, whose default above has a version tag; checkov cannot see through the variable
FROM ${BASE} AS runtime
ARG APT_PACKAGES=""
# Versions come from the base's distribution, which BASE chooses: nothing to pin here (DL3008).
# $missing and $APT_PACKAGES are lists of packages: word splitting is wanted (SC2086).
# hadolint ignore=DL3008,SC2086
RUN missing=""; command -v python3 >/dev/null || missing=python3; \
    if [ -n "$missing$APT_PACKAGES" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $missing $APT_PACKAGES \
        && rm -rf /var/lib/apt/lists/*; \
    fi; \
    getent group 1000 >/dev/null || groupadd --gid 1000 clipperd; \
    getent passwd 1000 >/dev/null || useradd --no-log-init --no-create-home --uid 1000 --gid 1000 \
        --home-dir /tmp --shell /usr/sbin/nologin clipperd; \
    install -d -m 0755 /models \
    && install -d -m 0750 -o 1000 -g 1000 /var/cache/clipperd

# ---- builder: a virtual environment with clipperd and the chosen frameworks
FROM runtime AS builder
ARG EXTRAS=torch,onnx
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
# hadolint ignore=DL3008
RUN python3 -c "import ensurepip" 2>/dev/null \
    || { apt-get update \
        && apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; }; \
    python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY backends backends
COPY schedulers schedulers
COPY server server
COPY clipperd_admin clipperd_admin
# pip reads PIP_CERT and PIP_FIND_LINKS from the environment, where the build arguments are;
# the versions are pyproject.toml's pins
RUN spec=/src; [ -z "$EXTRAS" ] || spec="/src[$EXTRAS]"; \
    /opt/venv/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$spec"

# ---- the image: the runtime and the virtual environment, nothing of the build
FROM runtime
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    CLIPPERD_MODEL_REPOSITORY=/models \
    CLIPPERD_REPOSITORY_CACHE_DIR=/var/cache/clipperd \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 1000:1000
# HTTP/REST, gRPC, metrics
EXPOSE 8000 8001 8002
# SIGTERM drains: in-flight requests finish within --exit-timeout-secs (30 s by default)
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["clipperd", "health"]
ENTRYPOINT ["clipperd"]
CMD ["serve"]
