#!/usr/bin/env bash
# Renders the plain manifest, install/kubernetes/shunt.yaml, from the Helm chart, so that the two
# cannot drift apart (tests/manifests.sh fails when they differ). Usage: render.sh HELM [OUT]
set -euo pipefail
helm=$1
out=${2:-$(dirname "$0")/kubernetes/shunt.yaml}
{
  echo "# shunt: the installer DaemonSet, for \`kubectl apply -f install/kubernetes/shunt.yaml\`."
  echo "# Generated from install/helm/shunt by install/render.sh (default values, namespace"
  echo "# shunt-system); edit the chart, not this file. Settings are the SHUNT_* variables (see"
  echo "# \`shunt-install --help\`)."
  "$helm" template shunt "$(dirname "$0")/helm/shunt" --namespace shunt-system \
    --set createNamespace=true
} >"$out"
