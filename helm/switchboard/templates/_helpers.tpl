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
{{- if not (has $u.scheme (list "redis" "rediss" "redis+cluster" "rediss+cluster")) }}
{{- fail (printf "%s must start with redis://, rediss://, redis+cluster:// or rediss+cluster://, got %q" .var .url) }}
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

{{/*
"true" when a component (dict "root" . "component" "gateway"|"collector") uses
the redis.tls Secrets: some are set and one of its Redis URLs is rediss://
(the gateway's: redis.url; the collector's: also the federation's). Fails
when they are set and no URL of the release uses TLS.
*/}}
{{- define "switchboard.redisTlsWanted" -}}
{{- $root := .root }}
{{- $t := $root.Values.redis.tls }}
{{- if or $t.caSecret $t.clientSecret }}
{{- $isTls := dict "rediss" true "rediss+cluster" true }}
{{- $main := hasKey $isTls (urlParse (include "switchboard.redisBaseUrl" $root)).scheme }}
{{- $federation := false }}
{{- with $root.Values.collector.sources.federationRedisUrl }}
{{- $federation = hasKey $isTls (urlParse .).scheme }}
{{- end }}
{{- if not (or $main $federation) }}
{{- fail "redis.tls.caSecret / redis.tls.clientSecret are set, but no Redis URL uses TLS: write redis.url as rediss://… (rediss+cluster://… for a Redis Cluster) or collector.sources.federationRedisUrl as rediss://…, or unset them" }}
{{- end }}
{{- if or $main (and (eq .component "collector") $federation) }}true{{ end }}
{{- end }}
{{- end }}

{{/* SWITCHBOARD_REDIS_*_FILE ConfigMap data for the mounted redis.tls Secrets. */}}
{{- define "switchboard.redisTlsConfig" -}}
{{- $t := .Values.redis.tls }}
{{- if $t.caSecret }}
SWITCHBOARD_REDIS_CA_FILE: {{ printf "/etc/switchboard/redis-tls/ca/%s" $t.caKey | quote }}
{{- end }}
{{- if $t.clientSecret }}
SWITCHBOARD_REDIS_CLIENT_CERT_FILE: {{ printf "/etc/switchboard/redis-tls/client/%s" $t.clientCertKey | quote }}
SWITCHBOARD_REDIS_CLIENT_KEY_FILE: {{ printf "/etc/switchboard/redis-tls/client/%s" $t.clientKeyKey | quote }}
{{- end }}
{{- end }}

{{/* Volume mounts of the redis.tls Secrets. */}}
{{- define "switchboard.redisTlsMounts" -}}
{{- if .Values.redis.tls.caSecret }}
- name: redis-tls-ca
  mountPath: /etc/switchboard/redis-tls/ca
  readOnly: true
{{- end }}
{{- if .Values.redis.tls.clientSecret }}
- name: redis-tls-client
  mountPath: /etc/switchboard/redis-tls/client
  readOnly: true
{{- end }}
{{- end }}

{{/* Volumes of the redis.tls Secrets (only the keys used). */}}
{{- define "switchboard.redisTlsVolumes" -}}
{{- $t := .Values.redis.tls }}
{{- if $t.caSecret }}
- name: redis-tls-ca
  secret:
    secretName: {{ $t.caSecret }}
    defaultMode: 0440
    items:
      - key: {{ $t.caKey }}
        path: {{ $t.caKey }}
{{- end }}
{{- if $t.clientSecret }}
- name: redis-tls-client
  secret:
    secretName: {{ $t.clientSecret }}
    defaultMode: 0440
    items:
      - key: {{ $t.clientCertKey }}
        path: {{ $t.clientCertKey }}
      - key: {{ $t.clientKeyKey }}
        path: {{ $t.clientKeyKey }}
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

{{/* The gateways' admin port (/metrics and health), checked to differ from the client port. */}}
{{- define "switchboard.adminPort" -}}
{{- if eq (int .Values.gateway.adminPort) (int .Values.gateway.port) }}
{{- fail "gateway.adminPort must differ from gateway.port: /metrics stays off the port clients (and the Ingress) reach" }}
{{- end }}
{{- int .Values.gateway.adminPort }}
{{- end }}

{{/*
"true" when the render sees the cluster (helm install/upgrade, --dry-run=server),
empty when `lookup` answers nothing (helm template, Argo CD, client dry runs).
The release namespace's kube-root-ca.crt ConfigMap exists in every namespace of
Kubernetes >= 1.21 and anyone who may install here may read ConfigMaps here; when
the namespace is new (helm install --create-namespace renders before creating
it), the kube-system Namespace answers for the cluster (creating namespaces needs
cluster-wide rights, which include reading them).
*/}}
{{- define "switchboard.clusterReachable" -}}
{{- if lookup "v1" "ConfigMap" .Release.Namespace "kube-root-ca.crt" }}true
{{- else if lookup "v1" "Namespace" "" "kube-system" }}true
{{- end }}
{{- end }}

{{/* Name of the JWT Secret (existing or chart-made). */}}
{{- define "switchboard.jwtSecretName" -}}
{{- default (include "switchboard.componentName" (dict "root" . "component" "jwt")) .Values.auth.jwt.existingSecret }}
{{- end }}
