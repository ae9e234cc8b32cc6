# syntax=docker/dockerfile:1
# hoststack's images. hack/images (`make images`) builds the same images
# without a container engine; keep the two equivalent: same binaries, paths,
# users and entrypoints (internal/imagebuild names them).
#
#   docker build --target manager --build-arg VERSION=$(git describe --tags --always --dirty) -t ghcr.io/hoststack/hoststack-manager:TAG .
#   docker build --target agent   --build-arg VERSION=... -t ghcr.io/hoststack/hoststack-agent:TAG .
#   docker build --target apps    --build-arg VERSION=... -t ghcr.io/hoststack/hoststack-apps:TAG .
#
# The DPDK agent (-tags dpdk, cgo, libdpdk) is a build-tag variant built
# with `make test-dpdk`; no image is published for it.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    set -e; \
    ldflags="-s -w -X github.com/hoststack/hoststack/internal/version.Version=${VERSION}"; \
    for b in hoststack-manager hoststack-agent hoststack-cni; do \
      GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "$ldflags" -o /out/$b ./cmd/$b; \
    done; \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "$ldflags" -o /out/apps/echo-server ./examples/echo/server; \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "$ldflags" -o /out/apps/echo-client ./examples/echo/client; \
    if [ -d test/e2e/apps ]; then \
      for d in test/e2e/apps/*/; do n=$(basename "$d"); \
        GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "$ldflags" -o /out/apps/$n ./$d; \
      done; \
    fi

# The manager: nonroot (65532) on a static distroless base.
FROM gcr.io/distroless/static-debian12:nonroot AS manager
ARG VERSION=dev
LABEL org.opencontainers.image.source=https://github.com/hoststack/hoststack org.opencontainers.image.version=${VERSION}
COPY --from=build /out/hoststack-manager /usr/local/bin/hoststack-manager
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/hoststack-manager"]

# The apps of the examples and the end-to-end tests.
FROM gcr.io/distroless/static-debian12:nonroot AS apps
ARG VERSION=dev
LABEL org.opencontainers.image.source=https://github.com/hoststack/hoststack org.opencontainers.image.version=${VERSION}
COPY --from=build /out/apps/ /usr/local/bin/
USER 65532:65532

# The node agent runs privileged (as root) and carries the CNI plugin it
# installs on the node (its --cni-binary).
FROM gcr.io/distroless/static-debian12 AS agent
ARG VERSION=dev
LABEL org.opencontainers.image.source=https://github.com/hoststack/hoststack org.opencontainers.image.version=${VERSION}
COPY --from=build /out/hoststack-agent /usr/local/bin/hoststack-agent
COPY --from=build /out/hoststack-cni /opt/hoststack/bin/hoststack-cni
USER 0:0
ENTRYPOINT ["/usr/local/bin/hoststack-agent"]
