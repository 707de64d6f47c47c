#!/usr/bin/env bash
# Validates the Kubernetes example against the Kubernetes API schemas (strict:
# unknown fields are errors) with kubernetes-validate, which ships the schemas
# and needs no cluster. `cargo test --test it packaging` checks the rest (the
# ConfigMap's config passes `pgsidecar check` with the pod's environment).
#
#   pip install kubernetes-validate   # once
#   bash packaging/check-kubernetes.sh [KUBERNETES_VERSION ...]
set -euo pipefail
cd "$(dirname "$0")/kubernetes"

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "kubernetes-validate is not installed: pip install kubernetes-validate" >&2
    exit 1
fi

# 1.29: the first release with native sidecars (restartPolicy: Always) on by default.
versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=(1.29.0 1.37.0)
for version in "${versions[@]}"; do
    kubernetes-validate --strict --kubernetes-version "$version" \
        secret.yaml configmap.yaml deployment.yaml hpa.yaml
done
echo "check-kubernetes: all manifests valid"
