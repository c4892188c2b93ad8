#!/usr/bin/env bash
# Checks deploy/ offline, against a built promptgate binary:
#
#   scripts/check-deploy.sh BINARY          e.g. scripts/check-deploy.sh target/debug/promptgate
#
#  (a) render: `kubectl kustomize` renders the base and every overlay (every component is
#      used by some overlay, so it is rendered too);
#  (b) schema: every rendered object validates, strictly, against the Kubernetes schemas of
#      the oldest supported version (1.29, native sidecars) and the newest one known, with the
#      kubernetes-validate package (schemas included, no network); custom resources
#      (ServiceMonitor) are reported as skipped and their wiring is checked instead;
#  (c) flags: every flag and PROMPTGATE_* variable given to promptgate by the manifests or the
#      Dockerfile is one that `BINARY serve --help` lists;
#  (d) wiring and exposure: references, ports, writable paths, security settings, mounted
#      Secrets and ConfigMaps readable by the container's user, the prompt
#      ConfigMaps against prompts/, and that the proxy is reachable only from inside the pod
#      (deploy/check_deploy.py says what exactly);
#  (e) self-test: the exposure check fails on deploy/kubernetes/testdata/exposed-proxy.
#
# Needs kubectl (with its built-in kustomize) and Python 3. Creates .venv/check-deploy/
# (git-ignored) and installs deploy/requirements.txt into it when that file changed since the
# last install; everything after that runs offline. Every step is bounded by a timeout.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 BINARY" >&2
    exit 2
fi
bin=$1
if [[ ! -f $bin || ! -x $bin ]]; then
    echo "check-deploy: \`$bin\` is not an executable file (build it first: cargo build)" >&2
    exit 2
fi
bin_abs="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kube="$root/deploy/kubernetes"
kubectl=${KUBECTL:-kubectl}
python=${PYTHON:-python3}
# The oldest Kubernetes the manifests support (native sidecars) and the newest schemas known.
kube_versions=(1.29.0 1.37.0)
started=$SECONDS

if ! command -v "$kubectl" >/dev/null; then
    echo "check-deploy: kubectl not found (it needs kubectl 1.27+, whose built-in kustomize is v5)" >&2
    exit 2
fi
kustomize_version="$(timeout 30 "$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v//p' || true)"
if [[ ${kustomize_version%%.*} -lt 5 ]] 2>/dev/null || [[ -z $kustomize_version ]]; then
    echo "check-deploy: \`$kubectl\` has kustomize '${kustomize_version:-unknown}'; the manifests need v5 (kubectl 1.27+)" >&2
    exit 2
fi

# --- tools ---------------------------------------------------------------------------------
venv="$root/.venv/check-deploy"
requirements="$root/deploy/requirements.txt"
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "check-deploy: creating .venv/check-deploy" >&2
    mkdir -p "$root/.venv"
    timeout 120 "$python" -m venv --clear "$venv"
fi
stamp_key="$( { cat "$requirements"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)"
stamp="$venv/.requirements-$stamp_key"
if [[ ! -f $stamp ]]; then
    echo "check-deploy: installing deploy/requirements.txt into .venv/check-deploy" >&2
    timeout 600 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    rm -f "$venv"/.requirements-*
    touch "$stamp"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0

# --- (a) render ------------------------------------------------------------------------------
echo "== (a) render: kubectl kustomize"
renders=()
for dir in "$kube/base" "$kube"/overlays/*/; do
    dir=${dir%/}
    name=${dir#"$kube/"}
    out="$work/${name//\//_}.yaml"
    # The base generates ConfigMaps from the repository's prompts/, outside the kustomization
    # folder: kustomize reads them only with the load restrictor off.
    if timeout 60 "$kubectl" kustomize --load-restrictor LoadRestrictionsNone "$dir" >"$out" 2>"$work/err"; then
        echo "  ok   $name ($(grep -c '^kind:' "$out") objects)"
        renders+=("$name=$out")
    else
        echo "FAIL render: $name:"
        sed 's/^/    /' "$work/err"
        status=1
    fi
done
for component in "$kube"/components/*/; do
    component=$(basename "$component")
    if ! grep -qs "components/$component\$" "$kube"/overlays/*/kustomization.yaml; then
        echo "FAIL render: component $component is used by no overlay, so nothing renders it"
        status=1
    fi
done
if [[ ${#renders[@]} -eq 0 ]]; then
    echo "check-deploy: nothing rendered" >&2
    exit 1
fi

# --- (b) schema, (c) flags, (d) wiring --------------------------------------------------------
echo "== (b) schema, (c) flags, (d) wiring"
version_args=()
for v in "${kube_versions[@]}"; do version_args+=(--kube-version "$v"); done
if ! timeout 300 "$venv/bin/python" -B "$root/deploy/check_deploy.py" \
    --binary "$bin_abs" --dockerfile "$root/deploy/Dockerfile" --prompts "$root/prompts" \
    "${version_args[@]}" "${renders[@]}"; then
    status=1
fi

# --- (e) the exposure check catches a bad manifest ---------------------------------------------
# deploy/kubernetes/testdata/exposed-proxy publishes the proxy three ways and opens the admin
# port to everyone: the check must fail, naming each.
echo "== (e) self-test: the exposure check fails on testdata/exposed-proxy"
bad="$work/exposed-proxy.yaml"
if ! timeout 60 "$kubectl" kustomize --load-restrictor LoadRestrictionsNone "$kube/testdata/exposed-proxy" >"$bad" 2>"$work/err"; then
    echo "FAIL self-test: cannot render testdata/exposed-proxy:"
    sed 's/^/    /' "$work/err"
    status=1
elif timeout 300 "$venv/bin/python" -B "$root/deploy/check_deploy.py" \
    --binary "$bin_abs" --dockerfile "$root/deploy/Dockerfile" --prompts "$root/prompts" \
    "${version_args[@]}" "exposed-proxy=$bad" >"$work/bad.out" 2>&1; then
    echo "FAIL self-test: check_deploy.py passed a manifest that exposes the proxy"
    status=1
else
    for expected in "the proxy listens on 0.0.0.0:8080" "declared as a containerPort" \
        "Service example-app-proxy publishes the proxy port 8080" "admits the admin/metrics port 9090 from anywhere"; do
        if grep -q "FAIL exposure: .*$expected" "$work/bad.out"; then
            echo "  ok   refused: $expected"
        else
            echo "FAIL self-test: no \"FAIL exposure\" line saying \"$expected\":"
            sed 's/^/    /' "$work/bad.out"
            status=1
        fi
    done
fi

if [[ $status -eq 0 ]]; then
    echo "check-deploy: all checks passed ($((SECONDS - started)) s)"
else
    echo "check-deploy: FAILED ($((SECONDS - started)) s)"
fi
exit $status
