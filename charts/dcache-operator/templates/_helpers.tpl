{{- define "dcache-operator.labels" -}}
app.kubernetes.io/name: dcache-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "dcache-operator.selector" -}}
app.kubernetes.io/name: dcache-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
