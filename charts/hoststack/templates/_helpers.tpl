{{/* Labels of every object; component is added per object. */}}
{{- define "hoststack.labels" -}}
app.kubernetes.io/name: hoststack
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Pod selector labels of a component: (dict "root" $ "component" "manager"). */}}
{{- define "hoststack.selector" -}}
app.kubernetes.io/name: hoststack
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: (dict "root" $ "image" .Values.manager.image). */}}
{{- define "hoststack.image" -}}
{{- $g := .root.Values.image -}}
{{- $repo := .image.repository -}}
{{- if $g.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" $g.registry) .image.repository -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default $g.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "hoststack.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
- name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "hoststack.agentNamespace" -}}{{ .Values.agent.namespace.name }}{{- end -}}

{{/* The webhook's serving certificate Secret. */}}
{{- define "hoststack.webhookCertSecret" -}}
{{- if .Values.webhook.certManager.enabled -}}hoststack-webhook-tls{{- else -}}hoststack-webhook-cert{{- end -}}
{{- end -}}
