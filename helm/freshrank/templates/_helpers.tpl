{{/*
Names, labels, the image reference, and the environment of each role.

The environment variable names below are the contract with the application's settings
classes (serving/settings.py, streaming/settings.py, sdk/settings.py): this file is the one
place the chart names them.
*/}}

{{- define "freshrank.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "freshrank.fullname" -}}
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

{{/*
Name of one component, kept within the limit Kubernetes or Flink sets for that kind:
include "freshrank.componentName" (list . "stream" 45). Flink cluster ids are at most 45
characters, CronJob names at most 52 (their Jobs append 11), everything else 63.
*/}}
{{- define "freshrank.componentName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $max := index . 2 -}}
{{- printf "%s-%s" (include "freshrank.fullname" $root | trunc (int (sub $max (add1 (len $suffix)))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "freshrank.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: include "freshrank.selectorLabels" (list . "api") */}}
{{- define "freshrank.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "freshrank.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component: include "freshrank.labels" (list . "api") */}}
{{- define "freshrank.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "freshrank.chart" $root }}
{{ include "freshrank.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: freshrank
{{- end -}}

{{- define "freshrank.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "freshrank.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "freshrank.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "freshrank.storageClaimName" -}}
{{- default (include "freshrank.componentName" (list . "data" 63)) .Values.storage.existingClaim -}}
{{- end -}}

{{/* Where the ConfigMaps are mounted; the image has nothing there. */}}
{{- define "freshrank.feastConfigDir" -}}/etc/freshrank/feast{{- end -}}
{{- define "freshrank.experimentsDir" -}}/etc/freshrank/experiments{{- end -}}
{{/* The venv and Feast repo paths of the image (see Dockerfile). */}}
{{- define "freshrank.python" -}}/opt/freshrank/venv/bin/python{{- end -}}
{{- define "freshrank.feastRepo" -}}/opt/freshrank/feature_repo{{- end -}}

{{/* An env var read from an existing Secret: include "freshrank.secretEnv" (list NAME SECRET KEY) */}}
{{- define "freshrank.secretEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 | quote }}
      key: {{ index . 2 | quote }}
{{- end -}}

{{/* Is Kafka reached with SASL? */}}
{{- define "freshrank.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{/*
Environment every role shares: Kafka for the SDK (FRESHRANK_KAFKA_*), Redis, the Feast repo
config and registry, the model registry and the data locations. The batch jobs read these.
*/}}
{{- define "freshrank.commonEnv" -}}
- name: FRESHRANK_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: FRESHRANK_KAFKA_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: FRESHRANK_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "freshrank.kafkaSasl" . }}
- name: FRESHRANK_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_KAFKA_SASL_USERNAME" .Values.kafka.existingSecret .Values.kafka.usernameKey) }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_KAFKA_SASL_PASSWORD" .Values.kafka.existingSecret .Values.kafka.passwordKey) }}
{{- end }}
- name: FRESHRANK_REDIS_ADDRESS
  value: {{ .Values.redis.address | quote }}
{{- if .Values.redis.existingSecret }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_REDIS_PASSWORD" .Values.redis.existingSecret .Values.redis.passwordKey) }}
{{- end }}
- name: FRESHRANK_FEAST_REGISTRY
  value: {{ .Values.feast.registry | quote }}
- name: FEAST_FS_YAML_FILE_PATH
  value: {{ printf "%s/feature_store.yaml" (include "freshrank.feastConfigDir" .) | quote }}
- name: FRESHRANK_MODEL_REGISTRY
  value: {{ .Values.modelRegistry.uri | quote }}
- name: FRESHRANK_MODEL_NAME
  value: {{ .Values.modelRegistry.modelName | quote }}
- name: FRESHRANK_DATA_DIR
  value: {{ .Values.data.dir | quote }}
- name: FRESHRANK_CATALOG_PATH
  value: {{ .Values.data.catalogPath | quote }}
{{- with .Values.schemaRegistry }}
{{- if .url }}
- name: FRESHRANK_SCHEMA_REGISTRY_URL
  value: {{ .url | quote }}
- name: FRESHRANK_SCHEMA_REGISTRY_AUTO_REGISTER
  value: {{ .autoRegister | quote }}
{{- if .existingSecret }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO" .existingSecret .userInfoKey) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The feed API's settings (serving/settings.py: FRESHRANK_SERVE_*, nested fields with "__"). */}}
{{- define "freshrank.apiEnv" -}}
- name: FRESHRANK_SERVE_ENVIRONMENT
  value: {{ .Values.api.environment | quote }}
- name: FRESHRANK_SERVE_HOST
  value: "0.0.0.0"
- name: FRESHRANK_SERVE_PORT
  value: {{ .Values.api.port | quote }}
{{- if .Values.api.existingSecret }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_SERVE_API_KEYS" .Values.api.existingSecret .Values.api.apiKeysKey) }}
{{- end }}
- name: FRESHRANK_SERVE_ONLINE_STORE__ADDRESS
  value: {{ .Values.redis.address | quote }}
{{- if .Values.redis.existingSecret }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_SERVE_ONLINE_STORE__PASSWORD" .Values.redis.existingSecret .Values.redis.passwordKey) }}
{{- end }}
- name: FRESHRANK_SERVE_ONLINE_STORE__FEAST_REGISTRY
  value: {{ .Values.feast.registry | quote }}
- name: FRESHRANK_SERVE_EVENTS__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: FRESHRANK_SERVE_EVENTS__TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: FRESHRANK_SERVE_EVENTS__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "freshrank.kafkaSasl" . }}
- name: FRESHRANK_SERVE_EVENTS__SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_SERVE_EVENTS__SASL_USERNAME" .Values.kafka.existingSecret .Values.kafka.usernameKey) }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_SERVE_EVENTS__SASL_PASSWORD" .Values.kafka.existingSecret .Values.kafka.passwordKey) }}
{{- end }}
- name: FRESHRANK_SERVE_MODEL_REGISTRY
  value: {{ .Values.modelRegistry.uri | quote }}
- name: FRESHRANK_SERVE_MODEL_NAME
  value: {{ .Values.modelRegistry.modelName | quote }}
- name: FRESHRANK_SERVE_EXPERIMENTS_PATH
  value: {{ printf "%s/experiments.yaml" (include "freshrank.experimentsDir" .) | quote }}
- name: FRESHRANK_SERVE_CATALOG_PATH
  value: {{ .Values.data.catalogPath | quote }}
{{- end -}}

{{/*
The stream job's settings (streaming/settings.py: FRESHRANK_STREAM_*). Checkpointing is not
here: under the operator it is Flink configuration (execution.checkpointing.*) in the
FlinkDeployment, and the job must not override it.
*/}}
{{- define "freshrank.streamEnv" -}}
- name: FRESHRANK_STREAM_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: FRESHRANK_STREAM_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: FRESHRANK_STREAM_DLQ_TOPIC
  value: {{ .Values.kafka.dlqTopic | quote }}
- name: FRESHRANK_STREAM_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "freshrank.kafkaSasl" . }}
- name: FRESHRANK_STREAM_SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_STREAM_SASL_USERNAME" .Values.kafka.existingSecret .Values.kafka.usernameKey) }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_STREAM_SASL_PASSWORD" .Values.kafka.existingSecret .Values.kafka.passwordKey) }}
{{- end }}
- name: FRESHRANK_STREAM_REDIS_ADDRESS
  value: {{ .Values.redis.address | quote }}
{{- if .Values.redis.existingSecret }}
{{ include "freshrank.secretEnv" (list "FRESHRANK_STREAM_REDIS_PASSWORD" .Values.redis.existingSecret .Values.redis.passwordKey) }}
{{- end }}
- name: FRESHRANK_STREAM_FEAST_REGISTRY
  value: {{ .Values.feast.registry | quote }}
- name: FRESHRANK_STREAM_CATALOG_PATH
  value: {{ .Values.data.catalogPath | quote }}
- name: FRESHRANK_STREAM_PARALLELISM
  value: {{ .Values.stream.parallelism | quote }}
- name: FRESHRANK_STREAM_METRICS_PORT
  value: {{ .Values.stream.metrics.port | quote }}
- name: FRESHRANK_STREAM_METRICS_BIND_ADDRESS
  value: {{ .Values.stream.metrics.bindAddress | quote }}
{{- range $key, $value := .Values.stream.settings }}
- name: {{ printf "FRESHRANK_STREAM_%s" (upper $key) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every freshrank pod mounts: the shared volume, the Feast config, a writable /tmp. */}}
{{- define "freshrank.volumes" -}}
- name: data
{{- if or .Values.storage.existingClaim .Values.storage.create }}
  persistentVolumeClaim:
    claimName: {{ include "freshrank.storageClaimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: feast-config
  configMap:
    name: {{ include "freshrank.componentName" (list . "feast" 63) }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "freshrank.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.storage.mountPath }}
- name: feast-config
  mountPath: {{ include "freshrank.feastConfigDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
Refuse to render a release that could not work, with a message saying what to set. Credentials
are never defaulted: a SASL protocol or a production API without their existing Secret fails here.
*/}}
{{- define "freshrank.validate" -}}
{{- if and (include "freshrank.kafkaSasl" .) (not .Values.kafka.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.existingSecret: the name of a Secret holding the SASL username (key %q) and password (key %q)" .Values.kafka.securityProtocol .Values.kafka.usernameKey .Values.kafka.passwordKey) -}}
{{- end -}}
{{- if and (include "freshrank.kafkaSasl" .) (not .Values.kafka.saslMechanism) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.saslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and .Values.api.enabled (eq .Values.api.environment "production") (not .Values.api.existingSecret) -}}
{{- fail "api.environment=production needs api.existingSecret: the name of a Secret holding the API keys (comma-separated) under api.apiKeysKey; the chart never creates credentials" -}}
{{- end -}}
{{- if and .Values.stream.enabled (eq .Values.stream.upgradeMode "savepoint") (not .Values.stream.checkpoints.savepointsUri) -}}
{{- fail "stream.upgradeMode=savepoint needs stream.checkpoints.savepointsUri" -}}
{{- end -}}
{{- if and .Values.stream.enabled (eq .Values.stream.upgradeMode "last-state") (not .Values.stream.highAvailability.enabled) -}}
{{- fail "stream.upgradeMode=last-state needs stream.highAvailability.enabled=true" -}}
{{- end -}}
{{- if and .Values.stream.enabled (gt (int .Values.stream.jobManager.replicas) 1) (not .Values.stream.highAvailability.enabled) -}}
{{- fail "stream.jobManager.replicas > 1 needs stream.highAvailability.enabled=true" -}}
{{- end -}}
{{- end -}}
