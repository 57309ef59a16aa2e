{{- define "vap.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "vap.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vap.registryLocation" -}}
{{- if .Values.registry.url -}}
{{ .Values.registry.url }}
{{- else -}}
/etc/vap/registry/registry.yaml
{{- end -}}
{{- end -}}

{{- define "vap.probe" -}}
exec:
  command:
    - python
    - -c
    - |
      import sys, urllib.request
      ok = all(b"success" in urllib.request.urlopen(u, timeout=5).read() for u in sys.argv[1:])
      sys.exit(0 if ok else 1)
    {{- range .urls }}
    - {{ . }}
    {{- end }}
initialDelaySeconds: {{ .delay }}
periodSeconds: 10
timeoutSeconds: 12
failureThreshold: {{ .failures }}
{{- end -}}

{{- define "vap.registryVolume" -}}
{{- if not .Values.registry.url }}
- name: registry
  configMap:
    name: {{ include "vap.fullname" . }}-registry
{{- end }}
{{- end -}}

{{- define "vap.registryMount" -}}
{{- if not .Values.registry.url }}
- name: registry
  mountPath: /etc/vap/registry
  readOnly: true
{{- end }}
{{- end -}}
