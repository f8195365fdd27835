{{/* Names. */}}
{{- define "inferno.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inferno.fullname" -}}
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

{{- define "inferno.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "inferno.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "inferno.selectorLabels" (list $ "api") */}}
{{- define "inferno.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "inferno.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* An image reference: include "inferno.image" (list $ .Values.images.api) */}}
{{- define "inferno.image" -}}
{{- $root := index . 0 -}}{{- $img := index . 1 -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "inferno.secretName" -}}
{{- default (printf "%s-secrets" (include "inferno.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The bitnami redis chart's fullname, as it computes it. */}}
{{- define "inferno.redisFullname" -}}
{{- if .Values.redis.fullnameOverride -}}
{{- .Values.redis.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "redis" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "inferno.redisHost" -}}
{{- printf "%s-master.%s.svc" (include "inferno.redisFullname" .) .Release.Namespace -}}
{{- end -}}

{{/* The Secret and key holding the in-release Redis password. */}}
{{- define "inferno.redisPasswordSecret" -}}
{{- default (include "inferno.redisFullname" .) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- define "inferno.redisPasswordKey" -}}
{{- default "redis-password" .Values.redis.auth.existingSecretPasswordKey -}}
{{- end -}}

{{/* Environment shared by every component: Redis, models, auth, settings, secrets. */}}
{{- define "inferno.env" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "inferno.redisPasswordSecret" . }}
      key: {{ include "inferno.redisPasswordKey" . }}
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "inferno.redisHost" .) | quote }}
{{- else }}
- name: REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "inferno.redisHost" .) | quote }}
{{- end }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "inferno.secretName" . }}
      key: redis-url
{{- end }}
- name: MODEL_DIR
  value: {{ .Values.models.mountPath | quote }}
- name: INFERNO_AUTH
  value: {{ .Values.auth | quote }}
- name: INFERNO_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "inferno.secretName" . }}
      key: webhook-secret
      optional: true
- name: INFERNO_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "inferno.secretName" . }}
      key: api-key
      optional: true
{{- range $k, $v := .Values.config }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* Extra env of one component (a map). */}}
{{- define "inferno.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "inferno.modelsVolume" -}}
- name: models
{{- if .Values.models.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-models" (include "inferno.fullname" .)) .Values.models.persistence.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* The init container that builds the demo models into the models volume. */}}
{{- define "inferno.modelsInit" -}}
{{- if .Values.models.buildDemo.enabled }}
- name: build-demo-models
  image: {{ include "inferno.image" (list . .Values.images.models) }}
  imagePullPolicy: {{ .Values.images.models.pullPolicy }}
  command: ["inferno-jobs", "models", "build-demo"{{ range .Values.models.buildDemo.names }}, {{ . | quote }}{{ end }}]
  env:
    - name: MODEL_DIR
      value: {{ .Values.models.mountPath | quote }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  {{- with .Values.models.buildDemo.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: models
      mountPath: {{ .Values.models.mountPath }}
{{- end }}
{{- end -}}

{{/* Pod labels of one component: its selector labels plus chart and version. */}}
{{- define "inferno.podLabels" -}}
{{- $root := index . 0 -}}
{{ include "inferno.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end -}}
