{{/* Names, labels and shared fragments. The chart version stays out of selectors so that
selectors never change across upgrades. */}}

{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "palisade.fullname" -}}
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

{{- define "palisade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The four services: values key -> component name and binary. */}}
{{- define "palisade.components" -}}
tokenBroker: {component: token-broker, binary: palisade-token-broker, envPrefix: PALISADE_TOKEN_BROKER, grpcService: palisade.tokens.v1.TokenBrokerService}
alertIngest: {component: alert-ingest, binary: palisade-alert-ingest, envPrefix: PALISADE_ALERT_INGEST, grpcService: palisade.alerts.v1.AlertService}
notifier: {component: notifier, binary: palisade-notifier, envPrefix: PALISADE_NOTIFIER, grpcService: palisade.notify.v1.NotificationService}
compliance: {component: compliance, binary: palisade-compliance, envPrefix: PALISADE_COMPLIANCE, grpcService: palisade.compliance.v1.ComplianceService}
{{- end -}}

{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "palisade.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "palisade.labels" -}}
helm.sh/chart: {{ include "palisade.chart" .root }}
{{ include "palisade.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: palisade
{{- end -}}

{{- define "palisade.componentName" -}}
{{- printf "%s-%s" (include "palisade.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "palisade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "palisade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "palisade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The configuration file of one service, as a dict; rendered to TOML in the ConfigMap. */}}
{{- define "palisade.config" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $base := dict
  "server" (dict
    "grpc_listen" (printf "0.0.0.0:%d" (int $v.ports.grpc))
    "admin_listen" (printf "0.0.0.0:%d" (int $v.ports.admin))
    "shutdown_deadline" (printf "%ds" (int $v.shutdownDeadlineSeconds)))
  "queue" (dict "backend" "redis" "key_prefix" $v.redis.keyPrefix)
-}}
{{- if ne .component "notifier" -}}
{{- $_ := set $base "telemetry" (dict "log_format" $v.logging.format "log_filter" $v.logging.level) -}}
{{- end -}}
{{- if eq .component "notifier" -}}
{{- $_ := set $base "ack_listen" (printf "0.0.0.0:%d" (int .spec.linkPort)) -}}
{{- $_ := set $base "channels" (dict "ssrf" (dict "allow_private" $v.notifier.ssrf.allowPrivate "allow_loopback" false "allow_link_local" false)) -}}
{{- end -}}
{{- toToml (mustMergeOverwrite $base (deepCopy .spec.config)) -}}
{{- end -}}

{{/* Environment shared by every container: secrets come only from existing Secrets. */}}
{{- define "palisade.env" -}}
{{- $v := .root.Values -}}
- name: PALISADE_CONFIG
  value: /etc/palisade/config.toml
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.database.existingSecret.name }}
      key: {{ $v.database.existingSecret.key }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret.name }}
      key: {{ $v.redis.existingSecret.key }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "palisade-%s" .component }}
{{- with $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if $v.bootstrapAdmin.existingSecret.name }}
- name: {{ .envPrefix }}__AUTH__BOOTSTRAP_ADMIN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $v.bootstrapAdmin.existingSecret.name }}
      key: {{ $v.bootstrapAdmin.existingSecret.key }}
{{- end }}
{{- if $v.serviceCredentials.existingSecret.name }}
- name: {{ .envPrefix }}__AUTH__SERVICE_CREDENTIAL
  valueFrom:
    secretKeyRef:
      name: {{ $v.serviceCredentials.existingSecret.name }}
      key: {{ .component }}
{{- end }}
{{- end -}}
