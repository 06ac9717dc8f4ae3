{{- define "shunt.dirs" -}}
{{- $presets := dict
  "default" (list "/opt/cni/bin" "/etc/cni/net.d")
  "k3s" (list "/var/lib/rancher/k3s/data/cni" "/var/lib/rancher/k3s/agent/etc/cni/net.d")
  "microk8s" (list "/var/snap/microk8s/current/opt/cni/bin" "/var/snap/microk8s/current/args/cni-network")
  "gke" (list "/home/kubernetes/bin" "/etc/cni/net.d") -}}
{{- $dirs := required (printf "preset %q: expected default, k3s, microk8s or gke" .Values.preset) (get $presets .Values.preset) -}}
{{- $bin := .Values.cniBinDir | default (index $dirs 0) -}}
{{- $conf := .Values.cniConfDir | default (index $dirs 1) -}}
{{- dict "bin" $bin "conf" $conf | toJson -}}
{{- end -}}
