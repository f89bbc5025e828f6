# flexvqa server image (CPU, Debian 12). Multi-stage: the build stage runs the same project scripts CI
# runs (scripts/install_deps.sh, scripts/build.sh); the runtime stage carries only the binaries and the
# shared libraries they need, and runs as a non-root user. The CUDA image, probes and Kubernetes wiring
# come with the deployment issue (issue 5).
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN scripts/install_deps.sh && BUILD_DIR=/src/build scripts/build.sh -DFLEXVQA_BUILD_TESTS=OFF \
 && /src/build/tools/make_tiny_llava --out /opt/flexvqa/models/tiny-llava

FROM debian:12-slim AS runtime
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libgrpc++1.51 libspdlog1.10 libturbojpeg0 libpng16-16 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /opt/flexvqa flexvqa
COPY --from=build /src/build/server/flexvqa_server /src/build/client/flexvqa_client \
     /src/build/tools/flexvqa_run /usr/local/bin/
COPY --from=build --chown=flexvqa /opt/flexvqa /opt/flexvqa
USER flexvqa
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/flexvqa_server"]
CMD ["--model_dir=/opt/flexvqa/models/tiny-llava", "--listen_address=0.0.0.0:50051"]
