{{/*
Chart name, cut to 63 characters (the limit of a DNS label and of a label value).
*/}}
{{- define "node-ping.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object name. The release name alone when it already contains the
chart name, so that `helm install node-ping charts/node-ping` makes `node-ping`, not
`node-ping-node-ping`.
*/}}
{{- define "node-ping.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "node-ping.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels of one object, as one map rendered once: Flux, kustomize and Argo CD refuse a key given
twice. Call with (dict "ctx" $ "component" "exporter" "extra" $map); component and extra are
optional. The most specific value wins: `extra` (the object's or pod's own labels) over
commonLabels over the chart's descriptive labels (helm.sh/chart, version, part-of). The identity
labels are the chart's alone, and values that give them are ignored: the selectors are built from
name, instance and component, and Helm's ownership check reads managed-by.
*/}}
{{- define "node-ping.labels" -}}
{{- $ctx := .ctx }}
{{- $descriptive := dict "helm.sh/chart" (include "node-ping.chart" $ctx) "app.kubernetes.io/part-of" (include "node-ping.name" $ctx) }}
{{- with $ctx.Chart.AppVersion }}
{{- $_ := set $descriptive "app.kubernetes.io/version" . }}
{{- end }}
{{- $given := mustMergeOverwrite (dict) (default (dict) $ctx.Values.commonLabels) (default (dict) .extra) }}
{{- $given = omit $given "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/managed-by" }}
{{- $identity := include "node-ping.selectorLabels" . | fromYaml }}
{{- $_ := set $identity "app.kubernetes.io/managed-by" $ctx.Release.Service }}
{{- toYaml (mustMergeOverwrite (dict) $descriptive $given $identity) }}
{{- end }}

{{/*
Selector labels, as YAML: name and instance, plus app.kubernetes.io/component when given, so that
the exporter's and discovery's selectors never overlap. Call with (dict "ctx" $ "component" $c).
Built as a map so that a release name YAML would read as a number or a boolean stays a string.
*/}}
{{- define "node-ping.selectorLabels" -}}
{{- $labels := dict "app.kubernetes.io/name" (include "node-ping.name" .ctx) "app.kubernetes.io/instance" .ctx.Release.Name }}
{{- with .component }}
{{- $_ := set $labels "app.kubernetes.io/component" . }}
{{- end }}
{{- toYaml $labels }}
{{- end }}

{{- define "node-ping.exporter.selectorLabels" -}}
{{- include "node-ping.selectorLabels" (dict "ctx" . "component" "exporter") }}
{{- end }}

{{- define "node-ping.podProber.selectorLabels" -}}
{{- include "node-ping.selectorLabels" (dict "ctx" . "component" "pod-prober") }}
{{- end }}

{{/*
The pod prober's selector labels as a label selector (`key=value,...`), for discovery's
--pod-selector: exactly the labels that tell its pods from every other pod of the namespace.
*/}}
{{- define "node-ping.podProber.selector" -}}
{{- $pairs := list }}
{{- range $key, $value := include "node-ping.podProber.selectorLabels" . | fromYaml }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The fullname is cut first, so that a 63-character one still gives a name apart from the exporter's. */}}
{{- define "node-ping.podProber.fullname" -}}
{{- printf "%s-pod" (include "node-ping.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{- define "node-ping.discovery.selectorLabels" -}}
{{- include "node-ping.selectorLabels" (dict "ctx" . "component" "discovery") }}
{{- end }}

{{/*
commonAnnotations merged with the given extra map, as YAML; empty when both are empty.
Call with (dict "ctx" $ "extra" $map).
*/}}
{{- define "node-ping.annotations" -}}
{{- $annotations := merge (deepCopy (default (dict) .extra)) (default (dict) .ctx.Values.commonAnnotations) }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Names of the objects the components share.
*/}}
{{- define "node-ping.configName" -}}
{{- printf "%s-config" (include "node-ping.fullname" .) }}
{{- end }}

{{/* The ConfigMap the discovery Deployment creates and keeps up to date (key nodes.json). */}}
{{- define "node-ping.nodesConfigMapName" -}}
{{- printf "%s-nodes" (include "node-ping.fullname" .) }}
{{- end }}

{{- define "node-ping.discovery.fullname" -}}
{{- printf "%s-discovery" (include "node-ping.fullname" .) }}
{{- end }}

{{/*
Name of discovery's ClusterRole and ClusterRoleBinding: cluster-scoped, so the namespace is part of
it, or the same release name in two namespaces would share (and fight over) one pair. Never cut:
at most 63 + 1 + 73 characters, far below the 253 a name may have, and a cut could make two
namespaces' names equal again.
*/}}
{{- define "node-ping.discovery.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "node-ping.discovery.fullname" .) }}
{{- end }}

{{/*
The namespace the events container writes its Events in, and where its Role is: always default,
not a value. The API server takes an Event about a Node (whose involvedObject has no namespace) in
default only (core/v1 validation: "does not match event.namespace"), where the kubelet's Node
Events are too, and `node-ping diagnose --publish-events` refuses any other (exit 2).
*/}}
{{- define "node-ping.events.namespace" -}}
default
{{- end }}

{{- define "node-ping.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "node-ping.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "node-ping.discovery.serviceAccountName" -}}
{{- if .Values.discovery.serviceAccount.create }}
{{- default (include "node-ping.discovery.fullname" .) .Values.discovery.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.discovery.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: repository@digest when a digest is given (the tag is then ignored), else
repository:tag. Call with (dict "repository" $r "tag" $t "digest" $d).
*/}}
{{- define "node-ping.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{/* The exporter's image; the tag defaults to the chart's appVersion. */}}
{{- define "node-ping.image" -}}
{{- include "node-ping.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{/*
Discovery's image, built from the Dockerfile's `discovery` target: by default the exporter's
repository with `-discovery` appended, and the exporter's tag. Never the exporter's digest: it
names the other image.
*/}}
{{- define "node-ping.discovery.image" -}}
{{- $image := .Values.discovery.image }}
{{- $repository := default (printf "%s-discovery" .Values.image.repository) $image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $image.tag }}
{{- include "node-ping.imageRef" (dict "repository" $repository "tag" $tag "digest" $image.digest) }}
{{- end }}

{{- define "node-ping.discovery.imagePullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.discovery.image.pullPolicy }}
{{- end }}

{{/*
The listen address of the exporter's /metrics, as NODE_PING_LISTEN_ADDRESS. Every interface
(`:PORT`) only when asked for; otherwise the address in the env var named by
"node-ping.bindAddressEnv", which Kubernetes expands. Always in brackets: an IPv6 address needs
them, and node-ping (as node-exporter) reads `[192.0.2.1]:PORT` as the IPv4 address.
*/}}
{{- define "node-ping.listenAddress" -}}
{{- if .Values.metrics.listenOnAllInterfaces }}
{{- printf ":%d" (int .Values.metrics.port) }}
{{- else }}
{{- printf "[$(%s)]:%d" (include "node-ping.bindAddressEnv" .) (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/*
The env var that holds the address /metrics is bound to: the node's (status.hostIP) in the node's
network namespace, the pod's own (status.podIP) in a network namespace of its own, where the
node's address does not exist.
*/}}
{{- define "node-ping.bindAddressEnv" -}}
{{- ternary "HOST_IP" "POD_IP" .Values.hostNetwork }}
{{- end }}

{{- define "node-ping.bindAddressField" -}}
{{- ternary "status.hostIP" "status.podIP" .Values.hostNetwork }}
{{- end }}

{{/*
Whether the exporter serves /metrics over HTTP: asked for directly, or needed by a monitor.
Renders "true" or "".
*/}}
{{- define "node-ping.metricsEnabled" -}}
{{- if or .Values.metrics.enabled .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}true{{- end }}
{{- end }}

{{/* Time the pings of one cycle take in whole seconds: count pings period milliseconds apart, rounded up. */}}
{{- define "node-ping.pingSeconds" -}}
{{- div (add (mul (int .Values.ping.count) (int .Values.ping.periodMs)) 999) 1000 }}
{{- end }}

{{/*
Length of one cycle for the liveness probe: the pings plus slack for the last replies and the
textfile write.
*/}}
{{- define "node-ping.cycleSeconds" -}}
{{- add (include "node-ping.pingSeconds" . | int) (int .Values.livenessProbe.cycleSlackSeconds) }}
{{- end }}

{{- define "node-ping.dnsPolicy" -}}
{{- if .Values.dnsPolicy }}
{{- .Values.dnsPolicy }}
{{- else if .Values.hostNetwork }}
{{- "ClusterFirstWithHostNet" }}
{{- else }}
{{- "ClusterFirst" }}
{{- end }}
{{- end }}

{{/*
Helpers of the PrometheusRule (prometheusrule.yaml). With the default values they reproduce the
words of monitoring/node-ping.rules.yaml exactly, so the rendered rules equal that file.
*/}}

{{/*
A Prometheus duration in words for alert descriptions: "5m" -> "5 minutes", "1h" -> "1 hour".
A compound duration ("1h30m") stays as it is.
*/}}
{{- define "node-ping.durationWords" -}}
{{- $units := dict "ms" "millisecond" "s" "second" "m" "minute" "h" "hour" "d" "day" "w" "week" "y" "year" }}
{{- $duration := toString . }}
{{- if regexMatch "^[0-9]+(ms|s|m|h|d|w|y)$" $duration }}
{{- $count := regexFind "^[0-9]+" $duration }}
{{- $count }} {{ get $units (trimPrefix $count $duration) }}{{ if ne $count "1" }}s{{ end }}
{{- else }}
{{- $duration }}
{{- end }}
{{- end }}

{{/*
A fraction as a percentage for alert descriptions: 0.05 -> "5%", 0.025 -> "2.5%". The rounding
hides float noise (0.07 * 100 = 7.000000000000001).
*/}}
{{- define "node-ping.percent" -}}
{{- round (mulf . 100) 2 }}%
{{- end }}

{{/* As node-ping.percent, but 0.5 reads "half", as in "lose more than half of their packets". */}}
{{- define "node-ping.share" -}}
{{- if eq (float64 .) 0.5 }}half{{ else }}{{ include "node-ping.percent" . }}{{ end }}
{{- end }}

{{/*
The textfile prefix as the start of a regular expression inside a double-quoted PromQL string:
regex metacharacters escaped, then backslashes and quotes escaped for the string.
*/}}
{{- define "node-ping.prefixRegex" -}}
{{- regexQuoteMeta .Values.textfile.prefix | replace "\\" "\\\\" | replace "\"" "\\\"" }}
{{- end }}

{{/*
The labels of one alert: prometheusRule.additionalRuleLabels plus its severity, which wins.
Call with (dict "severity" $severity "ctx" $).
*/}}
{{- define "node-ping.ruleLabels" -}}
{{- toYaml (merge (dict "severity" .severity) (default (dict) .ctx.Values.prometheusRule.additionalRuleLabels)) }}
{{- end }}
