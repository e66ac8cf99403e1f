{{/*
Checks of value combinations a JSON schema cannot express. Each one fails the render with a
sentence that says what to fix, instead of an install the API server refuses halfway or pods that
quietly do less than the values say. Included once, from daemonset.yaml (always rendered).
*/}}
{{- define "node-ping.validate" -}}
{{- include "node-ping.validate.monitors" . }}
{{- include "node-ping.validate.serviceName" . }}
{{- include "node-ping.validate.nodes" . }}
{{- include "node-ping.validate.podNetwork" . }}
{{- include "node-ping.validate.events" . }}
{{- end }}

{{/*
The pod prober reads pods.json, which only discovery writes; and its textfiles must survive the
host prober's start-up clean-up (`<prefix>*.prom`) and the other way round.
*/}}
{{- define "node-ping.validate.podNetwork" -}}
{{- with .Values.podNetwork }}
{{- if .enabled }}
{{- if not $.Values.discovery.enabled }}
{{- fail "podNetwork.enabled needs discovery.enabled: the pod prober's targets (pods.json, the pod IPs of the other nodes' pod probers) are kept up to date by discovery only. Turn discovery on, or podNetwork off." }}
{{- end }}
{{- $host := $.Values.textfile.prefix }}
{{- if or (hasPrefix $host .textfilePrefix) (hasPrefix .textfilePrefix $host) }}
{{- fail (printf "podNetwork.textfilePrefix '%s' and textfile.prefix '%s': one is the start of the other, so each prober's start-up clean-up (<prefix>*.prom) would remove the other's files. Use prefixes neither of which starts the other, e.g. node-ping_ and node-ping-pod_." .textfilePrefix $host) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Events are published by a container of the discovery Deployment, from a Prometheus it must be told. */}}
{{- define "node-ping.validate.events" -}}
{{- if .Values.events.enabled }}
{{- if not .Values.discovery.enabled }}
{{- fail "events.enabled needs discovery.enabled: the Events are published by a second container of the discovery Deployment. Turn discovery on, or events off." }}
{{- end }}
{{- if not (trim .Values.events.prometheusUrl) }}
{{- fail "events.enabled needs events.prometheusUrl: the URL of the Prometheus that scrapes node-ping's metrics, e.g. --set events.prometheusUrl=http://prometheus-operated.monitoring.svc:9090" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "node-ping.validate.monitors" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: Prometheus would scrape every exporter twice and hold every series twice. Turn one of them off." }}
{{- end }}
{{- end }}

{{/*
The headless Service is named <fullname>, and a Service name must be a DNS-1035 label: Helm takes
release names such as `2nd` or `np.prod` that give none.
*/}}
{{- define "node-ping.validate.serviceName" -}}
{{- if .Values.serviceMonitor.enabled }}
{{- $name := include "node-ping.fullname" . }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- $valid := regexReplaceAll "[^-a-z0-9]+" $name "-" }}
{{- if not (regexMatch "^[a-z]" $valid) }}
{{- $valid = printf "np-%s" $valid }}
{{- end }}
{{- fail (printf "serviceMonitor.enabled: the Service for the ServiceMonitor would be named %q, which the API server refuses: a Service name starts with a lowercase letter and holds only lowercase letters, digits and '-'. Set fullnameOverride to such a name, e.g. --set fullnameOverride=%s" $name ($valid | trunc 63 | trimSuffix "-")) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The static `nodes` (discovery off): refuse what `node-ping run` would skip (node_ping/targets.py),
so that every listed node is pinged: a blank name or one that starts with '-', a name or an
address listed twice, and an ipAddress that is no unicast IP address (a host name, a CIDR range).
Names and addresses are compared as the exporter reads them, without surrounding spaces.
*/}}
{{- define "node-ping.validate.nodes" -}}
{{- if not .Values.discovery.enabled }}
{{- $names := dict }}
{{- $addresses := dict }}
{{- range $index, $node := .Values.nodes }}
{{- $name := trim $node.name }}
{{- $address := trim $node.ipAddress }}
{{- if or (not $name) (hasPrefix "-" $name) }}
{{- fail (printf "nodes: entry %d: name '%s' is blank or starts with '-'; node-ping would skip it. Use the node's name." $index $node.name) }}
{{- end }}
{{- if hasKey $names $name }}
{{- fail (printf "nodes: name '%s' is listed twice (entries %d and %d); node-ping would ping only the first. Give every node its own entry." $name (get $names $name) $index) }}
{{- end }}
{{- if not (include "node-ping.isIP" $address) }}
{{- fail (printf "nodes: ipAddress '%s' of node '%s' is not an IPv4 or IPv6 address (a host name or a CIDR range is not taken); node-ping would skip the node. Use the node's InternalIP, e.g. 192.0.2.11 or 2001:db8::11." $node.ipAddress $name) }}
{{- end }}
{{- if include "node-ping.isNotUnicast" $address }}
{{- fail (printf "nodes: ipAddress '%s' of node '%s' is not a unicast address (0.0.0.0, ::, or multicast); node-ping would skip the node. Use the node's InternalIP." $node.ipAddress $name) }}
{{- end }}
{{- if hasKey $addresses (lower $address) }}
{{- fail (printf "nodes: ipAddress '%s' of node '%s' is listed twice (also for node '%s'); node-ping would ping it only once, as the first node. Give every node its own address." $address $name (get $addresses (lower $address))) }}
{{- end }}
{{- $_ := set $names $name $index }}
{{- $_ = set $addresses (lower $address) $name }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when the text is an IPv4 or IPv6 address (IPv6 optionally with an IPv4 tail and a %zone),
as Python's ipaddress reads it; "" otherwise. An IPv4 tail stands for two groups, and `::` for at
least one, so at most 7 groups may sit around it.
*/}}
{{- define "node-ping.isIP" -}}
{{- $octet := "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])" }}
{{- $ipv4 := printf "%s(\\.%s){3}" $octet $octet }}
{{- $group := "[0-9a-f]{1,4}" }}
{{- $groups := printf "^(%s(:%s)*)?$" $group $group }}
{{- $ipv6 := regexReplaceAll (printf ":%s$" $ipv4) (lower (regexReplaceAll "%[^%]+$" . "")) ":0:0" }}
{{- $halves := splitList "::" $ipv6 }}
{{- if regexMatch (printf "^%s$" $ipv4) . }}true
{{- else if not (contains ":" $ipv6) }}
{{- else if eq (len $halves) 1 }}
{{- if regexMatch (printf "^%s(:%s){7}$" $group $group) $ipv6 }}true{{ end }}
{{- else if and (eq (len $halves) 2) (regexMatch $groups (first $halves)) (regexMatch $groups (last $halves)) }}
{{- if le (add (len (compact (splitList ":" (first $halves)))) (len (compact (splitList ":" (last $halves))))) 7 }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" for an IP address node-ping does not ping: unspecified (0.0.0.0, ::) or multicast. */}}
{{- define "node-ping.isNotUnicast" -}}
{{- $address := lower (regexReplaceAll "%[^%]+$" . "") }}
{{- if or (regexMatch "^[0:.]+$" $address) (regexMatch "^(22[4-9]|23[0-9])\\." $address) (regexMatch "^ff[0-9a-f]{2}:" $address) }}true{{ end }}
{{- end }}
