# flexvqa server images, multi-stage (deploy/README.md).
#   docker build --target runtime-cpu  -t flexvqa:cpu  .   # Debian 12, CPU LibTorch: what CI builds
#   docker build --target runtime-cuda -t flexvqa:cuda .   # CUDA runtime image, LibTorch from the torch wheel
# Each build stage runs one script of deploy/docker/: build_cpu.sh (scripts/install_deps.sh +
# scripts/build.sh, what CI runs) and build_cuda.sh (scripts/gpu/fetch_devdeps.sh + scripts/gpu/build.sh,
# the GPU machine's recipe, shared gpu.md). .dockerignore keeps a host build/, .git and node_modules out
# of the context; ctest deploy.DockerBuildStages runs build_cpu.sh in a copy of the checkout filtered
# through it and checks collect_libs.sh's library list, without a Docker engine.
# Pinned: base images by exact tag (no registry was reachable to read digests from; pin them with
# `docker buildx imagetools inspect IMAGE:TAG` where one is), torch by version.
# Runtime images run as a non-root user with the server as entrypoint; gRPC on 50051 with the standard
# grpc.health.v1 service (Kubernetes' native gRPC probes need nothing in the image), Prometheus metrics
# on 9464. Flags come from FLEXVQA_<FLAG> environment variables (deploy/k8s/base/flags.env).

# torch 2.11.0 for CUDA 13.0: what the GPU machine runs (shared gpu.md); the CUDA image matches it.
ARG CUDA_VERSION=13.0.0
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

# ---------------------------------------------------------------- CPU (Debian 12)
FROM debian:12.11 AS build-cpu
WORKDIR /src
COPY . .
RUN deploy/docker/build_cpu.sh /opt/flexvqa

FROM debian:12.11-slim AS runtime-cpu
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libgrpc++1.51 libspdlog1.10 libturbojpeg0 libpng16-16 \
      libprometheus-cpp-core1.0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /opt/flexvqa flexvqa
COPY --from=build-cpu /src/build/server/flexvqa_server /src/build/client/flexvqa_client \
     /src/build/tools/flexvqa_run /usr/local/bin/
COPY --from=build-cpu --chown=flexvqa /opt/flexvqa /opt/flexvqa
COPY deploy/docker/collect_libs.sh /usr/local/lib/flexvqa/collect_libs.sh
# Fails the image build if the packages above miss a library the binaries need.
RUN /usr/local/lib/flexvqa/collect_libs.sh --check /opt/flexvqa/lib /usr/local/bin/flexvqa_server \
      /usr/local/bin/flexvqa_client /usr/local/bin/flexvqa_run
USER 10001
ENV FLEXVQA_LISTEN_ADDRESS=0.0.0.0:50051 FLEXVQA_METRICS_LISTEN_ADDRESS=0.0.0.0:9464 \
    FLEXVQA_MODEL_DIR=/opt/flexvqa/models/demo-flex
EXPOSE 50051 9464
# For `docker run` (Kubernetes uses its own gRPC probe): the client's ModelInfo call answers once serving.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s \
  CMD ["/usr/local/bin/flexvqa_client", "--server=127.0.0.1:50051", "--info"]
ENTRYPOINT ["/usr/local/bin/flexvqa_server"]

# ---------------------------------------------------------------- CUDA
# The Debian packages the CUDA build lacks (gRPC, spdlog/fmt 9, prometheus-cpp, ...), fetched on Debian.
FROM debian:12.11 AS devdeps
WORKDIR /src
COPY scripts/gpu/fetch_devdeps.sh scripts/gpu/fetch_devdeps.sh
RUN apt-get update && scripts/gpu/fetch_devdeps.sh

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu24.04 AS build-cuda
ARG TORCH_INDEX
ARG TORCH_VERSION
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv cmake ninja-build g++ pkg-config git zlib1g-dev libpng-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
COPY --from=devdeps /src/.devdeps .devdeps
# torch/lib, the wheel's nvidia-* libraries and everything else ldd resolves, into /opt/flexvqa/lib.
RUN deploy/docker/build_cuda.sh /opt/flexvqa

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu24.04 AS runtime-cuda
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libssl3t64 zlib1g libpng16-16t64 libjpeg-turbo8 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /opt/flexvqa flexvqa
COPY --from=build-cuda /opt/flexvqa/lib /opt/flexvqa/lib
COPY --from=build-cuda /src/build-gpu/server/flexvqa_server /src/build-gpu/client/flexvqa_client \
     /usr/local/bin/
COPY --from=build-cuda /src/deploy/docker/collect_libs.sh /usr/local/lib/flexvqa/collect_libs.sh
# Fails the image build if a library the server needs is missing here (the driver's excepted).
RUN LD_LIBRARY_PATH=/opt/flexvqa/lib /usr/local/lib/flexvqa/collect_libs.sh --check /opt/flexvqa/lib \
      /usr/local/bin/flexvqa_server /usr/local/bin/flexvqa_client
ENV LD_LIBRARY_PATH=/opt/flexvqa/lib \
    FLEXVQA_LISTEN_ADDRESS=0.0.0.0:50051 FLEXVQA_METRICS_LISTEN_ADDRESS=0.0.0.0:9464 \
    FLEXVQA_DEVICE=cuda FLEXVQA_MODEL_DIR=/models/llava-1.5-7b-hf
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s \
  CMD ["/usr/local/bin/flexvqa_client", "--server=127.0.0.1:50051", "--info"]
ENTRYPOINT ["/usr/local/bin/flexvqa_server"]
