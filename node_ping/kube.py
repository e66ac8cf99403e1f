"""Talking to the Kubernetes API server, shared by the parts that do (discover, diagnose --publish-events):
loading the client's configuration and telling an API failure in one line a reader can act on.

The `kubernetes` package is imported inside the functions: the exporter image does not have it, and
`node-ping diagnose` without --publish-events must keep working there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from node_ping.settings import SettingsError


def api_client(kubeconfig: Path | None, kubeconfig_flag: str) -> Any:
    """A kubernetes ApiClient for the kubeconfig file, or for the pod's service account when there is
    none; SettingsError naming `kubeconfig_flag` and the fix when neither can be loaded."""
    from kubernetes import client  # noqa: PLC0415  (see the module docstring)
    from kubernetes import config as kube_config  # noqa: PLC0415

    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            kube_config.load_kube_config(config_file=str(kubeconfig),  # type: ignore[no-untyped-call]
                                         client_configuration=configuration, persist_config=False)
        else:
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as err:  # ConfigException, OSError, YAML errors: all mean "fix the config"
        source = kubeconfig or f"the pod's service account (not running in a pod? use {kubeconfig_flag})"
        raise SettingsError(f"cannot load the Kubernetes client configuration from {source}: {err}") from None
    return client.ApiClient(configuration)


def http_status(err: BaseException) -> int | None:
    """The HTTP status of a failed API call; None when no answer came (a refused connection, a timeout)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415  (see the module docstring)

    return err.status if isinstance(err, ApiException) and isinstance(err.status, int) else None


def no_answer(err: BaseException) -> bool:
    """Whether a call failed for want of an answer: connection refused or cut, a timeout, TLS trouble."""
    import urllib3  # noqa: PLC0415  (the kubernetes client's HTTP library)

    return isinstance(err, urllib3.exceptions.HTTPError | OSError)


def server_message(err: BaseException) -> str | None:
    """The API server's own sentence in a failed answer (the `message` of its Status), if it gave one."""
    body = getattr(err, "body", None)
    if http_status(err) is None or not isinstance(body, str | bytes):
        return None
    try:
        message = json.loads(body or "").get("message")
    except (ValueError, AttributeError):
        return None
    return message[:300] if isinstance(message, str) and message else None


def describe(err: BaseException) -> str:
    """A short account of an API failure: the status and the API server's own sentence, which for a
    403 names the missing permission ("... cannot patch resource "events" ..."); else the error's type
    and text, for a connection refused or a timeout."""
    status = http_status(err)
    if status is not None:
        text = f"HTTP {status} {getattr(err, 'reason', None) or ''}".strip()
        message = server_message(err)
        return f"{text}: {message}" if message else text
    import urllib3  # noqa: PLC0415  (the kubernetes client's HTTP library)

    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return f"{type(err.reason).__name__}: {err.reason}"  # the failure behind the retries
    return f"{type(err).__name__}: {err}"
