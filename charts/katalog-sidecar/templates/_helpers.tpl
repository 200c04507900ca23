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
{{- /* inject's own variables (sidecar.manifests.inject.RESERVED_ENV; a test keeps them equal) */ -}}
{{- define "katalog.reservedEnv" -}}POD_NAME POD_NAMESPACE POD_IP HOST_IP POD_UID KATALOG_SERVICES KATALOG_CONTAINER_NAME KATALOG_STATUS_FILE KATALOG_DRAIN_TIMEOUT KATALOG_GATE CONSUL_HTTP_TOKEN_FILE{{- end -}}
{{- /* sidecar.extraEnv as --sidecar-env args; refused here as the webhook would refuse them at start */ -}}
{{- define "katalog.sidecarEnvArgs" -}}
{{- $reserved := splitList " " (include "katalog.reservedEnv" .) -}}
{{- range $name, $value := .Values.sidecar.extraEnv }}
{{- if not (regexMatch "^[-._a-zA-Z][-._a-zA-Z0-9]*$" $name) }}
{{- fail (printf "sidecar.extraEnv: %q is not a valid environment variable name" $name) }}
{{- end }}
{{- if has $name $reserved }}
{{- fail (printf "sidecar.extraEnv: %s is written by inject itself; use the chart's own setting for it (values.yaml)" $name) }}
{{- end }}
{{- /* $$ is the kubelet's escape for $: $(POD_IP) must reach the webhook as written */}}
- {{ printf "--sidecar-env=%s=%s" $name (toString $value) | replace "$" "$$" | quote }}
{{- end }}
{{- end -}}
