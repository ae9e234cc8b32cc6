# hoststack — see README.md. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO ?= go
CONTROLLER_GEN ?= $(GO) tool controller-gen
KUBE_VERSION ?= v1.37.2
BIN ?= bin
# Stamped into every binary (internal/version); the images are tagged with it.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/hoststack/hoststack/internal/version.Version=$(VERSION)
IMAGES_OUT ?= $(BIN)/images

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: ## Generate CRDs and RBAC into config/.
	$(CONTROLLER_GEN) rbac:roleName=hoststack-manager crd webhook paths=./api/... paths=./controllers/... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	rm -f charts/hoststack/crds/*.yaml
	cp config/crd/bases/*.yaml charts/hoststack/crds/

.PHONY: fmt
fmt: ## gofmt the tree.
	$(GO) fmt ./...

.PHONY: vet
vet: ## go vet.
	$(GO) vet ./...

.PHONY: lint
lint: vet ## Static checks: gofmt and go vet.
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: verify
verify: ## Fail when generated code, CRDs, RBAC or go.mod are stale, or lint fails.
	$(MAKE) generate manifests
	$(GO) mod tidy
	@if ! git diff --quiet -- api config charts/hoststack/crds go.mod go.sum; then \
		echo "generated files or go.mod are stale; run 'make generate manifests && go mod tidy' and commit:"; \
		git diff --stat -- api config charts/hoststack/crds go.mod go.sum; exit 1; fi
	@if [ -n "$$(git status --porcelain --untracked-files=all -- api config charts/hoststack/crds)" ]; then \
		echo "untracked generated files:"; git status --porcelain -- api config charts/hoststack/crds; exit 1; fi
	$(MAKE) lint

##@ Build

.PHONY: build
build: ## Build every binary (and the echo example) into bin/, version stamped.
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/echo-server ./examples/echo/server
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/echo-client ./examples/echo/client

.PHONY: images
images: ## Build the manager, agent and apps images without Docker, as archives for `ctr images import`, into bin/images/.
	$(GO) run ./hack/images -version "$(VERSION)" -out $(IMAGES_OUT)

##@ Test

.PHONY: envtest-assets
envtest-assets: ## Build (once, then cached) etcd, kube-apiserver and kubectl from the Go module proxy.
	hack/envtest-assets.sh

# Cross-process shared-memory tests are kept out of -race builds (the race
# detector cannot see another process's atomics, golang/go#16206); the second
# go test runs them without -race.
.PHONY: test
test: ## Run every test: unit, envtest (real kube-apiserver), multi-process engine tests.
	assets="$$(hack/envtest-assets.sh | tail -1)"; \
	export KUBEBUILDER_ASSETS="$$assets"; \
	$(GO) test -race -count=1 -timeout 20m ./... && \
	$(GO) test -count=1 -timeout 20m ./engine/... ./client/... && \
	cd test/netpolcompare && $(GO) test -count=1 -timeout 10m ./...

.PHONY: test-dpdk
test-dpdk: ## The userspace transport tests on the DPDK link layer (installs Debian's libdpdk-dev; cgo, -tags dpdk).
	hack/test-dpdk.sh

.PHONY: bench
bench: ## Benchmarks side by side (hoststack vs TCP loopback, unix sockets, memcpy) -> bench/results.json.
	$(GO) run ./bench -out bench/results.json

##@ Cluster

.PHONY: cluster-up
cluster-up: ## A real single-node cluster on this machine (root, no Docker); prints its kubeconfig.
	$(GO) run ./hack/cluster up

.PHONY: cluster-down
cluster-down: ## Stop that cluster and remove everything it put on the host.
	$(GO) run ./hack/cluster down

.PHONY: e2e
e2e: ## cluster-up, the end-to-end tests (helm install, apps, agent kill, upgrade, uninstall), cluster-down (always).
	hack/e2e.sh

##@ Run

.PHONY: demo
demo: ## The whole thing locally: control plane, CRDs, manager, samples, statuses; then a clean stop.
	hack/demo.sh

.PHONY: install
install: ## Install the CRDs into the cluster of the current kubeconfig.
	kubectl apply --server-side -f config/crd/bases

.PHONY: uninstall
uninstall: ## Remove the CRDs (and every object of them) from the current cluster.
	kubectl delete --ignore-not-found -f config/crd/bases

.PHONY: run
run: ## Run the manager against the cluster of the current kubeconfig.
	$(GO) run ./cmd/hoststack-manager --leader-elect=false
