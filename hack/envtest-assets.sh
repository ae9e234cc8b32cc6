#!/usr/bin/env bash
# envtest-assets.sh: build the envtest control-plane binaries (etcd, kube-apiserver,
# kubectl) from the Go module proxy (no Docker, no release downloads) and print the
# directory that holds them, for use as KUBEBUILDER_ASSETS:
#
#   export KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
#
# The binaries go into ${HOSTSTACK_CACHE:-$HOME/.cache/hoststack}/envtest/<kube-version>/
# and are reused when they are already there and report the expected version.
# The directory is the LAST line of stdout; all progress goes to stderr.
#
# Environment:
#   KUBE_VERSION     Kubernetes version (default v1.37.2)
#   ETCD_VERSION     etcd version (default v3.7.3)
#   HOSTSTACK_CACHE  cache root (default $HOME/.cache/hoststack)
#   GO               go command (default go)
#   ASSET_SET        envtest (default: etcd, kube-apiserver, kubectl) or cluster (those
#                    plus kube-controller-manager, kube-scheduler, kubelet and kube-proxy,
#                    for hack/cluster); both share the directory, so `make test` never
#                    builds the cluster binaries and hack/cluster reuses the envtest ones.
#
# How: two throwaway wrapper modules are generated in a temp dir under the cache:
#   etcd: requires go.etcd.io/etcd/server/v3 and calls etcdmain.Main.
#   kube: requires k8s.io/kubernetes and replaces every staging module it requires at
#         v0.0.0 (k8s.io/api, k8s.io/apiserver, ...) with the matching v0.<minor>.<patch>.
# A cold build (empty build cache) takes ~10 minutes of 2 cores, almost all of it
# kube-apiserver (measured: 16m47s wall while other builds shared the machine; with a
# warm Go build cache 47s). Later runs reuse the binaries in well under a second.
# Concurrent runs are serialized with flock; binaries are built in a temp dir and
# renamed into place, so a half-built binary is never seen or reused.
#
# Adding a binary: add it to BINARIES (or CLUSTER_BINARIES) and give it a case in
# bin_group, bin_main and bin_version. Measured with v1.37.2 after kube-apiserver:
# kcm 7m53s, scheduler 0m41s, kubelet 2m03s.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE_ROOT="${HOSTSTACK_CACHE:-$HOME/.cache/hoststack}"
ENVTEST_ROOT="$CACHE_ROOT/envtest"
ASSET_DIR="$ENVTEST_ROOT/$KUBE_VERSION"
GO="${GO:-go}"

# The binaries this script provides. Order matters only for the log.
BINARIES=(etcd kube-apiserver kubectl)
# The rest of a node (hack/cluster): ASSET_SET=cluster.
CLUSTER_BINARIES=(kube-controller-manager kube-scheduler kubelet kube-proxy)
case "${ASSET_SET:-envtest}" in
envtest) ;;
cluster) BINARIES+=("${CLUSTER_BINARIES[@]}") ;;
*)
	echo "envtest-assets: error: ASSET_SET must be envtest or cluster, got '$ASSET_SET'" >&2
	exit 1
	;;
esac

# stdout is reserved for the final directory line; everything else goes to stderr.
exec 3>&1 1>&2

log() { printf 'envtest-assets: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$KUBE_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)(-[0-9A-Za-z.-]+)?$ ]] ||
	die "KUBE_VERSION must look like v1.<minor>.<patch>, got '$KUBE_VERSION'"
KUBE_MINOR="${BASH_REMATCH[1]}"
# Staging modules (k8s.io/api, ...) are tagged v0.<minor>.<patch> for kube v1.<minor>.<patch>.
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
[[ "$ETCD_VERSION" =~ ^v3\.[0-9]+\.[0-9]+ ]] ||
	die "ETCD_VERSION must look like v3.<minor>.<patch>, got '$ETCD_VERSION'"

# --- per-binary definitions -------------------------------------------------------

# bin_group BIN: the wrapper module BIN is built in (etcd or kube).
bin_group() {
	case "$1" in
	etcd) echo etcd ;;
	kube-apiserver | kubectl | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) echo kube ;;
	*) die "unknown binary $1" ;;
	esac
}

# bin_main BIN: the main.go of BIN's wrapper command.
bin_main() {
	case "$1" in
	etcd)
		cat <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
		;;
	kube-apiserver) kube_cobra_main 'k8s.io/kubernetes/cmd/kube-apiserver/app' 'app.NewAPIServerCommand()' ;;
	kube-controller-manager) kube_cobra_main 'k8s.io/kubernetes/cmd/kube-controller-manager/app' 'app.NewControllerManagerCommand()' ;;
	kube-scheduler) kube_cobra_main 'k8s.io/kubernetes/cmd/kube-scheduler/app' 'app.NewSchedulerCommand()' ;;
	kubelet) kube_cobra_main 'k8s.io/kubernetes/cmd/kubelet/app' 'app.NewKubeletCommand(context.Background())' context ;;
	kube-proxy) kube_cobra_main 'k8s.io/kubernetes/cmd/kube-proxy/app' 'app.NewProxyCommand()' ;;
	kubectl)
		cat <<'EOF'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
EOF
		;;
	*) die "unknown binary $1" ;;
	esac
}

# kube_cobra_main APP_PKG CONSTRUCTOR [EXTRA_IMPORT]: main for a k8s.io/kubernetes/cmd/*
# command whose app package returns a *cobra.Command.
kube_cobra_main() {
	local extra=""
	[[ -n "${3:-}" ]] && extra="	\"$3\""$'\n'
	cat <<EOF
package main

import (
${extra}	"os"
	_ "time/tzdata" // CronJob time zones even where the host has no zoneinfo

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"$1"
)

func main() { os.Exit(cli.Run($2)) }
EOF
}

# bin_version BIN: "<expected substring>|<args...>" for the version check.
bin_version() {
	case "$1" in
	etcd) echo "etcd Version: ${ETCD_VERSION#v}|--version" ;;
	kubectl) echo "Client Version: $KUBE_VERSION|version --client" ;;
	*) echo "Kubernetes $KUBE_VERSION|--version" ;;
	esac
}

# bin_ok DIR BIN: DIR/BIN exists, runs and reports the expected version.
bin_ok() {
	local path="$1/$2" spec want out
	spec="$(bin_version "$2")"
	want="${spec%%|*}"
	[[ -x "$path" ]] || return 1
	# shellcheck disable=SC2086 # the args are a word list on purpose
	out="$("$path" ${spec#*|} 2>&1)" || return 1
	[[ "$out" == *"$want"* ]]
}

# missing_bins: the BINARIES not (correctly) present in ASSET_DIR.
missing_bins() {
	local b
	for b in "${BINARIES[@]}"; do
		bin_ok "$ASSET_DIR" "$b" || echo "$b"
	done
}

# --- wrapper modules ---------------------------------------------------------------

# gomod DIR ARGS...: run go in module DIR, isolated from any workspace or the caller's
# module settings, building static host binaries.
gomod() {
	local dir="$1"
	shift
	(cd "$dir" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOOS= GOARCH= "$GO" "$@")
}

# prepare_etcd DIR: the etcd wrapper module.
prepare_etcd() {
	local dir="$1"
	mkdir -p "$dir/cmd/etcd"
	bin_main etcd >"$dir/cmd/etcd/main.go"
	cat >"$dir/go.mod" <<EOF
module hoststack.invalid/envtest/etcd

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
	gomod "$dir" mod tidy
}

# prepare_kube DIR BINS...: the Kubernetes wrapper module with a main per binary.
prepare_kube() {
	local dir="$1" b gomodfile staging
	shift
	for b in "$@"; do
		mkdir -p "$dir/cmd/$b"
		bin_main "$b" >"$dir/cmd/$b/main.go"
	done
	# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
	# ./staging/... directories, which do not apply to a dependent module.
	# (A stub go.mod first, so the download runs in, and can only touch, this module.)
	printf 'module hoststack.invalid/envtest/kube\n\ngo 1.26\n' >"$dir/go.mod"
	gomodfile="$(gomod "$dir" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
	[[ -f "$gomodfile" ]] || die "go mod download k8s.io/kubernetes@$KUBE_VERSION gave no go.mod"
	staging="$(sed -nE 's#^[[:space:]]*(require[[:space:]]+)?(k8s\.io/[^[:space:]]+)[[:space:]]+v0\.0\.0([[:space:]].*)?$#\2#p' "$gomodfile" | sort -u)"
	[[ -n "$staging" ]] || die "no k8s.io/* v0.0.0 requirements in $gomodfile"
	log "kube: replacing $(wc -w <<<"$staging") staging modules with $STAGING_VERSION"
	{
		printf 'module hoststack.invalid/envtest/kube\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
		for b in $staging; do
			printf '\t%s => %s %s\n' "$b" "$b" "$STAGING_VERSION"
		done
		printf ')\n'
	} >"$dir/go.mod"
	gomod "$dir" mod tidy
}

# ldflags_for GROUP: strip, and stamp the Kubernetes version where `--version` and
# `kubectl version` read it (component-base) and where client-go builds its default
# User-Agent (client-go/pkg/version).
ldflags_for() {
	local f="-s -w"
	if [[ "$1" == kube ]]; then
		local pkg
		for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			f+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$KUBE_MINOR -X $pkg.gitTreeState=clean"
		done
	fi
	echo "$f"
}

elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# --- main ----------------------------------------------------------------------------

command -v "$GO" >/dev/null || die "go not found (set GO=...)"
command -v flock >/dev/null || die "flock not found (util-linux)"
mkdir -p "$ENVTEST_ROOT"

# Fast path without the lock: everything is already there.
if [[ -z "$(missing_bins)" ]]; then
	log "reusing $ASSET_DIR"
	echo "$ASSET_DIR" >&3
	exit 0
fi

exec 9>"$ENVTEST_ROOT/.lock"
if ! flock -n 9; then
	log "another run holds $ENVTEST_ROOT/.lock; waiting for it"
	flock 9
fi

mapfile -t MISSING < <(missing_bins)
if ((${#MISSING[@]} == 0)); then
	log "reusing $ASSET_DIR (built by a concurrent run)"
	echo "$ASSET_DIR" >&3
	exit 0
fi

# We hold the lock, so any leftover build dir is from a killed run.
rm -rf "$ENVTEST_ROOT"/.build-*
WORK="$(mktemp -d "$ENVTEST_ROOT/.build-$KUBE_VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
OUT="$WORK/out"
mkdir -p "$OUT"

log "building ${MISSING[*]} (kube $KUBE_VERSION, etcd $ETCD_VERSION) with $("$GO" version)"
total_start=$(date +%s)

declare -A GROUP_BINS=()
for b in "${MISSING[@]}"; do
	g="$(bin_group "$b")"
	GROUP_BINS[$g]+="$b "
done

for g in etcd kube; do
	[[ -n "${GROUP_BINS[$g]:-}" ]] || continue
	# shellcheck disable=SC2206 # a word list
	bins=(${GROUP_BINS[$g]})
	start=$(date +%s)
	log "$g: resolving wrapper module"
	if [[ "$g" == etcd ]]; then
		prepare_etcd "$WORK/etcd"
	else
		prepare_kube "$WORK/kube" "${bins[@]}"
	fi
	log "$g: module ready in $(elapsed "$start")"
	for b in "${bins[@]}"; do
		start=$(date +%s)
		log "$b: building"
		gomod "$WORK/$g" build -trimpath -ldflags "$(ldflags_for "$g")" -o "$OUT/$b" "./cmd/$b"
		bin_ok "$OUT" "$b" || die "$b built but does not report '$(bin_version "$b" | cut -d'|' -f1)'"
		log "$b: built in $(elapsed "$start")"
	done
done

# Move into place: the whole directory in one rename when it is new, otherwise one
# rename per binary (each atomic; the temp dir is on the same filesystem).
if [[ ! -e "$ASSET_DIR" ]]; then
	mv -T "$OUT" "$ASSET_DIR"
else
	for b in "${MISSING[@]}"; do
		mv -f "$OUT/$b" "$ASSET_DIR/$b"
	done
fi
[[ -z "$(missing_bins)" ]] || die "binaries missing from $ASSET_DIR after install"
log "done in $(elapsed "$total_start"): $ASSET_DIR"
echo "$ASSET_DIR" >&3
