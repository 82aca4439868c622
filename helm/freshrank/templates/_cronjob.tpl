{{/*
A batch role as a CronJob: include "freshrank.cronjob" (list . "candidates" .Values.candidates)
Runs the image's `freshrank` entry point with the role's args and the shared environment.
*/}}
{{- define "freshrank.cronjob" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $job := index . 2 -}}
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{ include "freshrank.componentName" (list $root $role 52) }}
  labels:
    {{- include "freshrank.labels" (list $root $role) | nindent 4 }}
spec:
  schedule: {{ $job.schedule | quote }}
  {{- with $job.timeZone }}
  timeZone: {{ . | quote }}
  {{- end }}
  concurrencyPolicy: {{ $job.concurrencyPolicy }}
  startingDeadlineSeconds: {{ $job.startingDeadlineSeconds }}
  successfulJobsHistoryLimit: {{ $job.successfulJobsHistoryLimit }}
  failedJobsHistoryLimit: {{ $job.failedJobsHistoryLimit }}
  jobTemplate:
    metadata:
      labels:
        {{- include "freshrank.labels" (list $root $role) | nindent 8 }}
    spec:
      backoffLimit: {{ $job.backoffLimit }}
      activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
      template:
        metadata:
          labels:
            {{- include "freshrank.labels" (list $root $role) | nindent 12 }}
        spec:
          restartPolicy: Never
          serviceAccountName: {{ include "freshrank.serviceAccountName" $root }}
          automountServiceAccountToken: false
          {{- with $root.Values.imagePullSecrets }}
          imagePullSecrets:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.podSecurityContext | nindent 12 }}
          containers:
            - name: {{ $role }}
              image: {{ include "freshrank.image" $root | quote }}
              imagePullPolicy: {{ $root.Values.image.pullPolicy }}
              args:
                {{- toYaml $job.args | nindent 16 }}
              env:
                {{- include "freshrank.commonEnv" $root | nindent 16 }}
                {{- with $job.extraEnv }}
                {{- toYaml . | nindent 16 }}
                {{- end }}
              resources:
                {{- toYaml $job.resources | nindent 16 }}
              securityContext:
                {{- toYaml $root.Values.containerSecurityContext | nindent 16 }}
              volumeMounts:
                {{- include "freshrank.volumeMounts" $root | nindent 16 }}
          volumes:
            {{- include "freshrank.volumes" $root | nindent 12 }}
          {{- with $job.nodeSelector }}
          nodeSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $job.tolerations }}
          tolerations:
            {{- toYaml . | nindent 12 }}
          {{- end }}
{{- end -}}
