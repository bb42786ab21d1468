{{/* Name of the chart, overridable. */}}
{{- define "ctxmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified release name, at most 63 characters (DNS label). */}}
{{- define "ctxmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ctxmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "ctxmesh.labels" -}}
helm.sh/chart: {{ include "ctxmesh.chart" . }}
{{ include "ctxmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ctxmesh
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ctxmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ctxmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ctxmesh.injectorName" -}}
{{- printf "%s-injector" (include "ctxmesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ctxmesh.controlPlaneName" -}}
{{- printf "%s-control-plane" (include "ctxmesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ctxmesh.meshConfigName" -}}
{{- printf "%s-mesh" (include "ctxmesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ctxmesh.injectorServiceAccountName" -}}
{{- if .Values.injector.serviceAccount.create }}
{{- default (include "ctxmesh.injectorName" .) .Values.injector.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.injector.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ctxmesh.controlPlaneServiceAccountName" -}}
{{- if .Values.controlPlane.serviceAccount.create }}
{{- default (include "ctxmesh.controlPlaneName" .) .Values.controlPlane.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controlPlane.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ctxmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* uid 1337 is the uid the interception rules exclude, as in the Dockerfile. */}}
{{- define "ctxmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
fsGroup: 1337
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ctxmesh.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The xDS address sidecars use when the control plane is enabled. */}}
{{- define "ctxmesh.xdsAddress" -}}
{{- printf "%s.%s.svc:%d" (include "ctxmesh.controlPlaneName" .) .Release.Namespace (int .Values.controlPlane.xdsPort) }}
{{- end }}

{{/* The control plane's admin/API address: sidecars' health.reportTo. */}}
{{- define "ctxmesh.controlPlaneAdminAddress" -}}
{{- printf "%s.%s.svc:%d" (include "ctxmesh.controlPlaneName" .) .Release.Namespace (int .Values.controlPlane.adminPort) }}
{{- end }}

{{/* control-plane.yaml (ControlPlaneConfigSchema in src/config/schema.ts). */}}
{{- define "ctxmesh.controlPlaneConfig" -}}
{{- $cp := .Values.controlPlane -}}
port: {{ $cp.xdsPort }}
address: {{ $cp.listenAddress | quote }}
admin:
  port: {{ $cp.adminPort }}
  # Not the default 127.0.0.1: sidecars in other pods post health reports here, and the kubelet probes it.
  address: {{ $cp.listenAddress | quote }}
services:
  {{- toYaml $cp.services | nindent 2 }}
store:
{{- if eq $cp.store "redis" }}
  {{- if eq .Values.redis.mode "none" }}{{ fail "controlPlane.store redis needs a Redis: set redis.mode (external, sentinel or cluster)" }}{{ end }}
  {{- include "ctxmesh.redisL2" . | nindent 2 }}
{{- else }}
  {{- if gt (int $cp.replicas) 1 }}{{ fail "controlPlane.replicas > 1 needs controlPlane.store redis: replicas with in-memory stores would serve different registries" }}{{ end }}
  backend: memory
{{- end }}
registration:
  ttl: {{ $cp.registrationTtl }}
health:
  suspicionWindow: {{ $cp.suspicionWindow }}
log:
  level: {{ $cp.logLevel }}
{{- end }}

{{/* context.l2 of the sidecar config, from .Values.redis. */}}
{{- define "ctxmesh.redisL2" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "none" -}}
backend: memory
{{- else if eq $r.mode "external" -}}
{{- if not $r.external.host }}{{ fail "redis.external.host is required when redis.mode is external" }}{{ end -}}
backend: redis
{{- $host := $r.external.host }}
{{- /* An IPv6 address goes into the URL in brackets. */}}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}{{ $host = printf "[%s]" $host }}{{ end }}
url: {{ printf "%s://%s:%d/%d" (ternary "rediss" "redis" $r.external.tls) $host (int $r.external.port) (int $r.external.db) | quote }}
{{- else if eq $r.mode "sentinel" -}}
{{- if not $r.sentinel.hosts }}{{ fail "redis.sentinel.hosts needs at least one host:port when redis.mode is sentinel" }}{{ end -}}
backend: redis
url: {{ printf "%s://%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" $r.sentinel.tls) (join "," $r.sentinel.hosts) $r.sentinel.masterName (int $r.sentinel.db) | quote }}
{{- else if eq $r.mode "cluster" -}}
{{- if not $r.cluster.nodes }}{{ fail "redis.cluster.nodes needs at least one host:port when redis.mode is cluster" }}{{ end -}}
backend: redis
url: {{ printf "%s://%s" (ternary "rediss+cluster" "redis+cluster" $r.cluster.tls) (join "," $r.cluster.nodes) | quote }}
{{- end -}}
{{- end }}
