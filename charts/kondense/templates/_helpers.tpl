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
The rules of the operator where CompressedModels live: exactly the calls it makes (kondense/operator/
kube.py and kopf), nothing more; see the RBAC section of docs/kind.md.
  - compressedmodels: kopf lists/watches and patches them (progress annotations); get_cmodel reads one.
  - compressedmodels/status: patch_status merge-patches it.
  - compressedmodels/finalizers: children carry ownerReferences with blockOwnerDeletion.
  - jobs: kopf watches them (on.event); the controller creates, reads, lists and deletes them.
  - pods: list_pods (the pods of a track or Job).
  - deployments, services, configmaps: apply (get, create, merge-patch) and delete.
  - persistentvolumeclaims: pvc_exists (get).
  - events: kopf.event posts core/v1 Events.
  - httproutes (gatewayAPI only): read the route, merge-patch its backend weights.
  - secrets (notifications.enabled only): get the URL a spec.notifications[].secretKeyRef names.
*/}}
{{- define "kondense.workloadRules" -}}
- apiGroups: [kondense.dev]
  resources: [compressedmodels]
  verbs: [get, list, watch, patch]
- apiGroups: [kondense.dev]
  resources: [compressedmodels/status]
  verbs: [patch]
- apiGroups: [kondense.dev]
  resources: [compressedmodels/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.notifications.enabled }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- if .Values.gatewayAPI.enabled }}
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
{{- end }}
{{- end -}}

{{/*
The namespaces the operator watches, as a JSON list: empty when it watches the whole cluster
(watch.clusterWide), else watch.namespaces or, by default, the release namespace alone.
*/}}
{{- define "kondense.watchedNamespaces" -}}
{{- if .Values.watch.clusterWide -}}
{{- if .Values.watch.namespaces -}}
{{- fail "watch.clusterWide and watch.namespaces exclude each other: a cluster-wide operator watches every namespace" -}}
{{- end -}}
[]
{{- else -}}
{{- default (list .Release.Namespace) .Values.watch.namespaces | toJson -}}
{{- end -}}
{{- end -}}

{{/* Namespaces whose workload pods the PodMonitor selects. */}}
{{- define "kondense.namespaceSelector" -}}
{{- if .Values.watch.clusterWide }}
any: true
{{- else }}
matchNames:
{{- include "kondense.watchedNamespaces" . | fromJsonArray | toYaml | nindent 2 }}
{{- end }}
{{- end -}}
