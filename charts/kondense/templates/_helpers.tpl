{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "kondense.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: "<release>-kondense", or the release name alone when it already contains the chart name. */}}
{{- define "kondense.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kondense.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kondense.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kondense.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kondense.labels" -}}
helm.sh/chart: {{ include "kondense.chart" . }}
{{ include "kondense.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kondense
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kondense.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kondense.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag", the tag defaulting to the chart's appVersion. Call with (list $image $root). */}}
{{- define "kondense.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/*
The namespaced rules of the operator: everything it reads and writes where CompressedModels live.
Verbs are the ones the operator calls; see the RBAC section of docs/kind.md.
*/}}
{{- define "kondense.workloadRules" -}}
- apiGroups: [kondense.dev]
  resources: [compressedmodels]
  verbs: [get, list, watch, patch, update]
- apiGroups: [kondense.dev]
  resources: [compressedmodels/status]
  verbs: [get, patch, update]
- apiGroups: [kondense.dev]
  resources: [compressedmodels/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.gatewayAPI.enabled }}
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, patch, update]
{{- end }}
{{- end -}}

{{/* Namespaces whose workload pods the PodMonitor selects. */}}
{{- define "kondense.namespaceSelector" -}}
{{- if .Values.watch.namespaces }}
matchNames:
{{- toYaml .Values.watch.namespaces | nindent 2 }}
{{- else }}
any: true
{{- end }}
{{- end -}}
