{{/* Names and labels. */}}
{{- define "online.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "online.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "online.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "online.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "online.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "online.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one part: (dict "root" $ "component" "api") */}}
{{- define "online.selectorLabels" -}}
app.kubernetes.io/name: {{ include "online.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "online.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "online.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "online.secretName" -}}
{{- default (include "online.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "online.image" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (.override | default dict) -}}
{{- printf "%s:%s" $img.repository (toString (default .root.Chart.AppVersion $img.tag)) -}}
{{- end -}}

{{/* Consumers beyond the partition count would idle: the count is capped at kafka.partitions. */}}
{{- define "online.consumerReplicas" -}}
{{- min (int .Values.consumer.replicas) (int .Values.kafka.partitions) -}}
{{- end -}}

{{/* Roll the pods when their configuration changes. */}}
{{- define "online.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* What every pod of the chart shares: (dict "root" $ "part" .Values.api "component" "api" "args" (list "serve") ...) */}}
{{- define "online.podSpec" -}}
{{- $root := .root -}}
{{- $part := .part -}}
serviceAccountName: {{ include "online.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .terminationGracePeriodSeconds }}
terminationGracePeriodSeconds: {{ . }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "online.image" (dict "root" $root "override" .image) | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    envFrom:
      - configMapRef:
          name: {{ include "online.fullname" $root }}
      - secretRef:
          name: {{ include "online.secretName" $root }}
    {{- if or .numThreads .extraEnv $part.env }}
    env:
      {{- with .numThreads }}
      - name: ONLINE_NUM_THREADS
        value: {{ . | quote }}
      {{- end }}
      {{- with .extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      {{- with $part.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- end }}
    ports:
      - name: {{ .portName }}
        containerPort: {{ .port }}
        protocol: TCP
    {{- with .probes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: state
        mountPath: /state
      - name: tmp
        mountPath: /tmp
      {{- if .seedData }}
      - name: seed-data
        mountPath: /data
        readOnly: true
      {{- end }}
volumes:
  - name: state
    {{- toYaml $part.stateVolume | nindent 4 }}
  - name: tmp
    {{- toYaml $part.tmpVolume | nindent 4 }}
  {{- with .seedData }}
  - name: seed-data
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $part.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
