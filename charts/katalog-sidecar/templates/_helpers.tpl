{{- define "katalog.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "katalog.webhook" -}}{{ .Release.Name }}-webhook{{- end -}}
{{- define "katalog.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "katalog.labels" -}}
app.kubernetes.io/name: katalog-sidecar
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "katalog.selector" -}}
app.kubernetes.io/name: katalog-sidecar-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "katalog.condition" -}}{{ if has .Values.sidecar.gate (list "condition" "both") }}true{{ end }}{{- end -}}
