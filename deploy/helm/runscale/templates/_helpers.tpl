{{/*
Named templates shared by the chart's manifests.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "runscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full resource name: fullnameOverride, else "<release>-<name>", or the release name alone when
it already contains the chart name. At most 63 characters (a DNS label).
*/}}
{{- define "runscale.fullname" -}}
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

{{/* "<chart>-<version>", for the helm.sh/chart label. */}}
{{- define "runscale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the runscale pods; never change them after an install. */}}
{{- define "runscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "runscale.labels" -}}
helm.sh/chart: {{ include "runscale.chart" . }}
{{ include "runscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: runscale
{{- end }}

{{/* The service account the pods run as. */}}
{{- define "runscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "runscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Lease the replicas compete for. */}}
{{- define "runscale.leaseName" -}}
{{- default (include "runscale.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The configuration file's text. A mapping gets `listen: 0.0.0.0:<service.port>` unless it sets
`listen`; a string is used verbatim.
*/}}
{{- define "runscale.configText" -}}
{{- if kindIs "string" .Values.config }}
{{- .Values.config }}
{{- else }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if not (hasKey $config "listen") }}
{{- $_ := set $config "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}
{{- end }}

{{/*
The namespaces runner pods are created in, as a JSON list: rbac.runnerNamespaces, else (mode
environment) the circleci-runner-autoscaler namespace from extraEnv's APP_KUBERNETES_NAMESPACE,
else every `kubernetes` backend of the config that uses the in-cluster service account (no
kubeconfig or context of its own): its namespace, or the release namespace.
*/}}
{{- define "runscale.runnerNamespaces" -}}
{{- $namespaces := list }}
{{- if .Values.rbac.runnerNamespaces }}
{{- $namespaces = .Values.rbac.runnerNamespaces }}
{{- else if eq .Values.mode "environment" }}
{{- /* circleci-runner-autoscaler's namespace: APP_KUBERNETES_NAMESPACE, default circleci-runners. */}}
{{- $namespace := "circleci-runners" }}
{{- range .Values.extraEnv }}
{{- if and (eq (toString .name) "APP_KUBERNETES_NAMESPACE") .value }}
{{- $namespace = .value }}
{{- end }}
{{- end }}
{{- $namespaces = list $namespace }}
{{- else if kindIs "map" .Values.config }}
{{- range (.Values.config.backends | default list) }}
{{- if and (eq (toString .type) "kubernetes") (not .kubeconfig) (not .context) }}
{{- $namespaces = append $namespaces (default $.Release.Namespace .namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/* Refuses values that would make two replicas act at once. */}}
{{- define "runscale.validate" -}}
{{- if not (has .Values.mode (list "config" "environment")) }}
{{- fail (printf "mode must be config or environment, not %v" .Values.mode) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a leader, every replica would launch runners" }}
{{- end }}
{{- end }}
