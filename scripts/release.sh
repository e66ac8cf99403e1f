#!/usr/bin/env bash
# Builds a node-ping release: the exporter and discovery images (the Dockerfile's targets
# `exporter` and `discovery`) for linux/amd64 and linux/arm64 with podman, each as a manifest list
# tagged with the chart's appVersion, and the chart packaged as dist/node-ping-<chart version>.tgz.
# Pushes nothing: it prints what to push.
#
#   bash scripts/release.sh [--dry-run] [--chart-only] [--registry REGISTRY/PATH] [--out DIR]
#
#   --dry-run     print every command, run none (nothing is checked or written)
#   --chart-only  package the chart, build no image
#   --registry    name the images REGISTRY/PATH/node-ping[-discovery] (default: node-ping[-discovery])
#   --out         where the chart package goes (default: dist)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/charts/node-ping"
PLATFORMS=(linux/amd64 linux/arm64)
TARGETS=(exporter discovery)

dry_run=0
chart_only=0
registry=""
out="$ROOT/dist"

die() { echo "release.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --chart-only) chart_only=1 ;;
    --registry) (($# >= 2)) || die "--registry needs a value, e.g. --registry registry.example.com/team"
                registry=${2%/}; shift ;;
    --out) (($# >= 2)) || die "--out needs a directory"; out=$2; shift ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
  shift
done

# One `key: value` line of Chart.yaml, quotes removed.
chart_field() {
  local value
  value=$(sed -n "s/^$1:[[:space:]]*//p" "$CHART/Chart.yaml" | head -n 1)
  value=${value%\"}; value=${value#\"}
  [[ -n $value ]] || die "no $1 in $CHART/Chart.yaml"
  printf '%s' "$value"
}
chart_version=$(chart_field version)
app_version=$(chart_field appVersion)

# Prints a command as a shell would read it, then runs it unless this is a dry run.
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  ((dry_run)) || "$@"
}

# The image name of a Dockerfile target, as the chart pulls it by default: image.repository for
# the exporter, image.repository + "-discovery" for discovery.
# Without --registry the images are local: podman names them localhost/..., and a short name in
# `containers-storage:` would be read as docker.io/library/... and not be found.
image_of() {
  local name=node-ping
  [[ $1 == discovery ]] && name=node-ping-discovery
  printf '%s' "${registry:-localhost}/$name"
}

# Building for another architecture runs its binaries (apt-get, pip) through qemu, which the
# kernel finds through binfmt_misc.
check_emulation() {
  local platform arch machine handler
  machine=$(uname -m)
  for platform in "${PLATFORMS[@]}"; do
    arch=${platform#linux/}
    case "$arch:$machine" in
      amd64:x86_64|arm64:aarch64) continue ;;
      arm64:*) handler=qemu-aarch64 ;;
      amd64:*) handler=qemu-x86_64 ;;
    esac
    if [[ ! -e /proc/sys/fs/binfmt_misc/$handler ]]; then
      if ((dry_run)); then
        echo "# note: /proc/sys/fs/binfmt_misc/$handler is missing; a real run stops here"
      else
        echo "release.sh: building for $platform on $machine needs qemu's binfmt handler $handler," >&2
        echo "  which is not registered (/proc/sys/fs/binfmt_misc/$handler is missing). Install it:" >&2
        echo "  Debian/Ubuntu: apt-get install qemu-user-static binfmt-support" >&2
        echo "  Fedora: dnf install qemu-user-static; or once, in a container:" >&2
        echo "  podman run --rm --privileged docker.io/multiarch/qemu-user-static --reset -p yes" >&2
        exit 1
      fi
    fi
  done
}

build_images() {
  local target image platform arch
  ((dry_run)) || command -v podman >/dev/null || { echo "release.sh: podman is not installed" >&2; exit 1; }
  check_emulation
  for target in "${TARGETS[@]}"; do
    image=$(image_of "$target")
    for platform in "${PLATFORMS[@]}"; do
      arch=${platform#linux/}
      run podman build --platform "$platform" --target "$target" \
        --tag "$image:$app_version-$arch" --file "$ROOT/Dockerfile" "$ROOT"
    done
    # One name for both architectures: nodes pull the one that matches them. A list left by an
    # earlier run would keep its old entries beside the new ones: start afresh.
    if ((!dry_run)) && podman manifest exists "$image:$app_version"; then
      run podman manifest rm "$image:$app_version"
    fi
    run podman manifest create "$image:$app_version"
    for platform in "${PLATFORMS[@]}"; do
      run podman manifest add "$image:$app_version" "containers-storage:$image:$app_version-${platform#linux/}"
    done
  done
}

package_chart() {
  ((dry_run)) || mkdir -p "$out"
  if command -v helm >/dev/null; then
    run helm package "$CHART" --destination "$out"
  else
    # Helm's own packager through its Go SDK (helm-python-sdk, in the project's virtualenv).
    run "$ROOT/.venv/bin/python" -c 'import sys, helm_python; print(helm_python.package(sys.argv[1], destination=sys.argv[2]))' \
      "$CHART" "$out"
  fi
}

echo "# node-ping $app_version, chart $chart_version"
((chart_only)) || build_images
package_chart

push_to=${registry:-<registry>}
echo
echo "# To publish, push:"
if ((!chart_only)); then
  for target in "${TARGETS[@]}"; do
    image=$(image_of "$target")
    destination=$image
    [[ -n $registry ]] || destination="$push_to/${image#localhost/}"
    echo "podman manifest push --all $image:$app_version docker://$destination:$app_version"
  done
fi
echo "helm push $out/node-ping-$chart_version.tgz oci://$push_to/charts"
