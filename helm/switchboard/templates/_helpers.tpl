{{/* Names, labels and the pieces shared by the gateway and collector pods. */}}

{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.fullname" -}}
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

{{/* A component's object name: fullname-component, within 63 characters. */}}
{{- define "switchboard.componentName" -}}
{{- printf "%s-%s" (include "switchboard.fullname" .root | trunc (sub 62 (len .component) | int)) .component | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: pass (dict "root" $ "component" "gateway"). */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchboard.componentLabels" -}}
{{ include "switchboard.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Host and port of the Redis switchboard uses, as redis://host:port/db without password. */}}
{{- define "switchboard.redisBaseUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- printf "redis://%s:6379/0" (include "switchboard.componentName" (dict "root" . "component" "redis")) }}
{{- else if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else }}
{{- fail "redis.url is required (e.g. --set redis.url=redis://redis.example:6379/0), or set redis.bundled.enabled=true to run a small Redis in the release" }}
{{- end }}
{{- end }}

{{/*
Environment entries that define SWITCHBOARD_REDIS_URL (and the password it
references). Pass (dict "url" URL "username" USER "secret" SECRET "key" KEY
"var" VARNAME "passwordVar" PASSWORD_VARNAME).
*/}}
{{- define "switchboard.redisUrlEnv" -}}
{{- $u := urlParse .url }}
{{- if not (has $u.scheme (list "redis" "rediss" "redis+cluster")) }}
{{- fail (printf "%s must start with redis://, rediss:// or redis+cluster://, got %q" .var .url) }}
{{- end }}
{{- if $u.userinfo }}
{{- fail (printf "%s must not contain credentials: put the password in a Secret and name it in the existingSecret value" .var) }}
{{- end }}
{{- if .secret }}
- name: {{ .passwordVar }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
- name: {{ .var }}
  value: {{ printf "%s://%s:$(%s)@%s%s" $u.scheme (default "" .username) .passwordVar $u.host $u.path | quote }}
{{- else if .username }}
- name: {{ .var }}
  value: {{ printf "%s://%s@%s%s" $u.scheme .username $u.host $u.path | quote }}
{{- else }}
- name: {{ .var }}
  value: {{ .url | quote }}
{{- end }}
{{- end }}

{{/* Flags given as a camelCase map, as SWITCHBOARD_* ConfigMap data. */}}
{{- define "switchboard.flagEnv" -}}
{{- range $k, $v := . }}
{{- if kindIs "float64" $v }}
{{- /* YAML numbers arrive as float64: 2097152 must not become 2.097152e+06. */}}
{{- if eq $v (float64 (int64 $v)) }}{{ $v = int64 $v }}{{ end }}
{{- end }}
{{- if not (kindIs "invalid" $v) }}
SWITCHBOARD_{{ snakecase $k | upper }}: {{ toString $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Drain settings checked for consistency; returns the grace period. */}}
{{- define "switchboard.gracePeriod" -}}
{{- $d := .Values.gateway.drain }}
{{- if gt (int $d.windowSeconds) (int $d.deadlineSeconds) }}
{{- fail "gateway.drain.windowSeconds must not be longer than gateway.drain.deadlineSeconds" }}
{{- end }}
{{- $min := add $d.preStopSleepSeconds $d.deadlineSeconds }}
{{- $g := .Values.gateway.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $g }}
{{- add $min 5 }}
{{- else if lt (int $g) (int $min) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must be at least gateway.drain.preStopSleepSeconds + deadlineSeconds (%d), or Kubernetes kills gateways before they drain" (int $g) (int $min)) }}
{{- else }}
{{- $g }}
{{- end }}
{{- end }}

{{/* Name of the JWT Secret (existing or chart-made). */}}
{{- define "switchboard.jwtSecretName" -}}
{{- default (include "switchboard.componentName" (dict "root" . "component" "jwt")) .Values.auth.jwt.existingSecret }}
{{- end }}
