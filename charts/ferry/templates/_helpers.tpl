{{/* The chart's name, truncated to 63 characters (DNS label). */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name every object starts with. */}}
{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end }}

{{/* Selector labels of one component (`control` or `edge`): pass (list . "edge"). */}}
{{- define "ferry.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "ferry.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ferry.control" -}}{{ include "ferry.fullname" . }}-control{{- end }}
{{- define "ferry.controlHeadless" -}}{{ include "ferry.fullname" . }}-control-headless{{- end }}
{{- define "ferry.edge" -}}{{ include "ferry.fullname" . }}-edge{{- end }}
{{- define "ferry.secret" -}}{{ default (printf "%s-secrets" (include "ferry.fullname" .)) .Values.auth.existingSecret }}{{- end }}
{{- define "ferry.gossipKeyringSecret" -}}{{ default (printf "%s-gossip-keyring" (include "ferry.fullname" .)) .Values.gossip.existingKeyringSecret }}{{- end }}
{{- define "ferry.caSecret" -}}{{ default (printf "%s-ca" (include "ferry.fullname" .)) .Values.tls.existingSecret }}{{- end }}
{{- define "ferry.serviceAccount" -}}{{ include "ferry.fullname" . }}{{- end }}

{{/* The DNS name of voter `i` (0-based) through the headless Service. */}}
{{- define "ferry.voterHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "ferry.control" $root) (index . 1) (include "ferry.controlHeadless" $root) $root.Release.Namespace $root.Values.clusterDomain }}
{{- end }}

{{/* Every voter's raft address, `1=HOST:PORT,2=…`, as a TOML array. */}}
{{- define "ferry.peers" -}}
{{- $peers := list }}
{{- range $i := until (int .Values.control.replicas) }}
{{- $peers = append $peers (printf "%d=%s:%d" (add $i 1) (include "ferry.voterHost" (list $ $i)) (int $.Values.control.ports.raft)) }}
{{- end }}
{{- $peers | toJson }}
{{- end }}

{{/* Gossip seeds: the voters' gossip addresses, as a TOML array. */}}
{{- define "ferry.gossipSeeds" -}}
{{- $seeds := list }}
{{- range $i := until (int .Values.control.replicas) }}
{{- $seeds = append $seeds (printf "%s:%d" (include "ferry.voterHost" (list $ $i)) (int $.Values.gossip.port)) }}
{{- end }}
{{- $seeds | toJson }}
{{- end }}

{{/* The control plane's client URL (its Service; HTTPS with the voters' node certificates). */}}
{{- define "ferry.controlUrl" -}}
{{- printf "https://%s.%s.svc.%s:%d" (include "ferry.control" .) .Release.Namespace .Values.clusterDomain (int .Values.control.ports.api) }}
{{- end }}

{{/* The control plane's client URLs, as a TOML array. */}}
{{- define "ferry.controlUrls" -}}
{{- list (include "ferry.controlUrl" .) | toJson }}
{{- end }}
