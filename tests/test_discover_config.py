"""node_ping.discover.config: each setting of `node-ping discover` is checked once, and a value the
API server would refuse on every write stops the start with a sentence naming the flag and env var."""

from __future__ import annotations

import pytest

from node_ping.discover.config import ADDRESS_TYPES, RACK_LABEL, DiscoverSettings, label_key, parse_address_types
from node_ping.settings import SettingsError

NS, CM = "monitoring", "node-ping-nodes"


class TestAddressTypes:
    """--address-types: the IP address types, most preferred first, in any case, each once."""

    def test_address_types(self) -> None:
        assert parse_address_types("InternalIP,ExternalIP") == ("InternalIP", "ExternalIP")
        assert parse_address_types(" externalip ,externalIP,") == ("ExternalIP",)
        with pytest.raises(ValueError, match=r"'Hostname' is not an address type .* InternalIP, ExternalIP"):
            parse_address_types("Hostname")
        with pytest.raises(ValueError, match="empty"):
            parse_address_types(" , ")

    def test_a_refusal_names_the_flag_and_the_env_var(self) -> None:
        with pytest.raises(SettingsError, match=r"'--address-types' \(env var: 'NODE_PING_ADDRESS_TYPES'\): "
                                                r"'Hostname' is not an address type"):
            ADDRESS_TYPES.check("Hostname")
        with pytest.raises(SettingsError, match="'--address-types'"):
            DiscoverSettings(namespace=NS, configmap=CM, address_types=("Hostname",))


class TestNames:
    """What the API server answers with 422 on every write is refused at start, so the controller
    does not retry it for ever."""

    @pytest.mark.parametrize(("namespace", "configmap", "reason"), [
        (NS, "Node_Ping_Nodes", "'--configmap' (env var: 'NODE_PING_CONFIGMAP'): 'Node_Ping_Nodes' is not a valid "
                                "ConfigMap"),
        (NS, "nodes-", "'nodes-' is not a valid ConfigMap"),
        (NS, "a" * 254, "is not a valid ConfigMap name: use at most 253"),
        ("n" * 64, CM, "is not a valid namespace name: use at most 63"),
        ("kube.system", CM, "'--namespace' (env var: 'POD_NAMESPACE'): 'kube.system' is not a valid namespace"),
        ("Monitoring", CM, "'Monitoring' is not a valid namespace"),
    ], ids=["capitals-underscore", "trailing-dash", "long-name", "long-namespace", "dotted-namespace",
            "capital-namespace"])
    def test_names_the_api_server_would_refuse(self, namespace: str, configmap: str, reason: str) -> None:
        # The namespace may come from a kubeconfig or the pod's namespace file: the settings check it too.
        with pytest.raises(SettingsError) as info:
            DiscoverSettings(namespace=namespace, configmap=configmap)
        assert reason in str(info.value)

    def test_longest_valid_names_are_accepted(self) -> None:
        namespace, configmap = "n" * 63, ".".join(["a" * 63] * 3 + ["b" * 61])
        assert len(configmap) == 253
        settings = DiscoverSettings(namespace=namespace, configmap=configmap)
        assert (settings.namespace, settings.configmap) == (namespace, configmap)


class TestRackLabel:
    """--rack-label: a label key the API server could hold; anything else would silently give no racks."""

    @pytest.mark.parametrize("key", ["rack", "example.com/rack", "topology.example.com/rack-id", "a" * 63,
                                     "a" * 253 + "/" + "b" * 63, "Rack_1.x"])
    def test_label_keys(self, key: str) -> None:
        assert label_key(key) == key
        assert DiscoverSettings(namespace=NS, configmap=CM, rack_label=key).rack_label == key

    def test_blank_means_no_rack(self) -> None:
        assert label_key("  ") == ""

    @pytest.mark.parametrize(("key", "reason"), [
        ("rack label", "its name 'rack label' is not"),
        ("Example.com/rack", "its prefix 'Example.com' is not a DNS subdomain"),
        ("/rack", "its prefix '' is not"),
        ("example.com/", "its name '' is not"),
        ("a" * 64, "is not 1-63 letters"),
        ("-rack", "its name '-rack' is not"),
    ])
    def test_a_refusal_names_the_flag_and_the_env_var(self, key: str, reason: str) -> None:
        with pytest.raises(SettingsError) as info:
            RACK_LABEL.check(key)
        assert "'--rack-label' (env var: 'NODE_PING_RACK_LABEL')" in str(info.value)
        assert reason in str(info.value)
        with pytest.raises(SettingsError, match="--rack-label"):
            DiscoverSettings(namespace=NS, configmap=CM, rack_label=key)
