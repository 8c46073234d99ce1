#!/usr/bin/env bash
# Pins deploy/Dockerfile's two base images by digest: resolves the digest the
# registry serves today for each default tag (RUST_IMAGE, RUNTIME_IMAGE) and
# rewrites the ARG defaults to `name:tag@sha256:…`. Run it where a registry is
# reachable (CI with network, a workstation), review the diff, commit it; run it
# again to take newer bases (security updates). Re-running on a pinned file
# re-resolves the tag, not the old digest.
#
#   deploy/pin-base-images.sh            # rewrite deploy/Dockerfile
#   deploy/pin-base-images.sh --check    # exit 1 if a default is not pinned
#
# Uses the first of these it finds: crane, skopeo, regctl, docker buildx imagetools.
# The digest is the multi-platform index's (what `FROM` resolves per platform).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKERFILE=deploy/Dockerfile

args_of() { sed -n 's/^ARG \(RUST_IMAGE\|RUNTIME_IMAGE\)=\(.*\)$/\1 \2/p' "$DOCKERFILE"; }

if [ "${1:-}" = --check ]; then
  bad=0
  while read -r name ref; do
    case "$ref" in
      *@sha256:*) echo "ok  $name=$ref" ;;
      *) echo "not pinned: $name=$ref (run deploy/pin-base-images.sh where a registry is reachable)"; bad=1 ;;
    esac
  done < <(args_of)
  exit "$bad"
fi

digest_of() { # image reference without digest → sha256:…
  if command -v crane >/dev/null; then crane digest "$1"
  elif command -v skopeo >/dev/null; then skopeo inspect --raw "docker://$1" | sha256sum | sed 's/^/sha256:/; s/ .*//'
  elif command -v regctl >/dev/null; then regctl image digest "$1"
  elif docker buildx version >/dev/null 2>&1; then
    docker buildx imagetools inspect "$1" --format '{{json .Manifest.Digest}}' | tr -d '"'
  else
    echo "pin-base-images: none of crane, skopeo, regctl, docker buildx found" >&2; return 1
  fi
}

while read -r name ref; do
  tag_ref=${ref%@*}
  digest=$(digest_of "$tag_ref")
  case "$digest" in
    sha256:????????????????????????????????????????????????????????????????) ;;
    *) echo "pin-base-images: $tag_ref: unexpected digest '$digest'" >&2; exit 1 ;;
  esac
  sed -i "s|^ARG $name=.*\$|ARG $name=$tag_ref@$digest|" "$DOCKERFILE"
  echo "$name=$tag_ref@$digest"
done < <(args_of)
echo "deploy/Dockerfile updated: review (git diff deploy/Dockerfile) and commit"
