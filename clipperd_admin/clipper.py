"""Clipper's own admin client, ``clipper_admin``, driving clipperd: a ``ContainerManager`` that
points ``ClipperConnection`` at a running clipperd instead of Docker or Kubernetes.

    from clipper_admin import ClipperConnection
    from clipperd_admin.clipper import ClipperdContainerManager

    conn = ClipperConnection(ClipperdContainerManager("127.0.0.1:8000", "model_repository"))
    conn.connect()
    conn.register_application("digits", "doubles", "-1", 100000)
    conn.register_model("mnist", "1", "doubles")  # a model of the repository, version 1
    conn.link_model_to_app("digits", "mnist")

Management and queries both go to clipperd's HTTP port (Clipper's management routes and
``/{app}/predict`` live there); ``get_metric_addr()`` is the Prometheus port. What needs Docker
(building or running model containers, replicas, logs) raises ``ClipperException`` naming what
to use instead: models are deployed into the repository with :class:`clipperd_admin.ClipperdAdmin`
(``.admin`` here), then registered and linked as above.

This module imports ``clipper_admin`` (the package, 0.4.1) when it is imported; the rest of
``clipperd_admin`` never does, so only users of this module need it installed."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from clipper_admin.container_manager import ContainerManager
from clipper_admin.exceptions import ClipperException

from clipperd_admin.client import ClipperdAdmin

METRICS_PORT = 8002  # clipperd's default --metrics-port
PING_TIMEOUT_S = 10.0

_DEPLOY = (
    "deploy it into clipperd's model repository with clipperd_admin instead "
    "(ClipperdAdmin({repository!r}, {address!r}).deploy_python_function / deploy_pytorch_model / "
    "deploy_onnx_model / deploy_tensorflow_model / deploy_sklearn_model; also this manager's .admin), "
    "then ClipperConnection.register_model(name, version, input_type) and link_model_to_app"
)


def _host_port(address: str) -> str:
    """``host:port`` from ``host:port`` or ``http://host:port[/]``."""
    bare = address.removeprefix("http://").rstrip("/")
    if not bare or "/" in bare or ":" not in bare:
        raise ValueError(f"expected host:port, not {address!r}")
    return bare


class ClipperdContainerManager(ContainerManager):  # type: ignore[misc]  # clipper_admin is untyped
    """``http_address``: clipperd's HTTP port (``--http-port``); ``model_repository``: the folder it
    serves (for :attr:`admin` and the messages that point to it); ``metrics_address``: its
    Prometheus port (default: the same host, port 8002)."""

    def __init__(
        self,
        http_address: str = "127.0.0.1:8000",
        model_repository: str | Path = "model_repository",
        *,
        metrics_address: str | None = None,
        cluster_name: str = "clipperd",
    ) -> None:
        self.http_address = _host_port(http_address)
        self.model_repository = Path(model_repository)
        host = self.http_address.rsplit(":", 1)[0]
        self.metrics_address = _host_port(metrics_address) if metrics_address else f"{host}:{METRICS_PORT}"
        self.cluster_name = cluster_name
        self._admin: ClipperdAdmin | None = None

    @property
    def cluster_identifier(self) -> str:
        # ClipperConnection.build_model (which build_and_deploy_model and the deployers call)
        # asks its container manager only this before it calls Docker: the one point where a
        # manager can stop it with a useful message instead of Docker's connection error.
        if sys._getframe(1).f_code.co_name == "build_model":
            raise self._needs_docker("build_and_deploy_model builds a Docker image of the model")
        return self.cluster_name

    @property
    def admin(self) -> ClipperdAdmin:
        """clipperd's own deploy client on the same server and repository."""
        if self._admin is None:
            self._admin = ClipperdAdmin(self.model_repository, self.http_address)
        return self._admin

    def _needs_docker(self, what: str) -> ClipperException:
        how = _DEPLOY.format(repository=str(self.model_repository), address=self.http_address)
        return ClipperException(f"{what}, which clipperd does not do: {how}")

    # ---- the cluster ------------------------------------------------------------------------

    def start_clipper(self, *args: Any, **kwargs: Any) -> None:
        raise ClipperException(
            "clipperd is not started by clipper_admin: run `clipperd serve --model-repository "
            f"{self.model_repository}` (see docs/cli.md), then ClipperConnection.connect()"
        )

    def connect(self) -> None:
        """Checks that clipperd answers Clipper's management ping at ``http_address``."""
        url = f"http://{self.http_address}/admin/ping"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=PING_TIMEOUT_S) as answer:
                body = answer.read(64)
        except urllib.error.HTTPError as error:
            reason = error.read(2048).decode(errors="replace")
            raise ClipperException(f"clipperd at {self.http_address} refused {url}: {error.code} {reason}") from None
        except OSError as error:
            raise ClipperException(f"cannot reach clipperd at {self.http_address}: {error}") from None
        if body != b"PONG":
            raise ClipperException(f"{url} did not answer PONG: is {self.http_address} clipperd's HTTP port?")

    def stop_all(self, graceful: bool = True) -> None:
        raise ClipperException("clipper_admin does not stop clipperd: stop the server itself (SIGTERM drains it)")

    def get_logs(self, logging_dir: str) -> list[str]:
        raise ClipperException("clipperd writes its log to its standard error (or --log-file), not to containers")

    # ---- model containers -------------------------------------------------------------------

    def deploy_model(self, name: str, version: str, input_type: str, image: str, num_replicas: int = 1) -> None:
        raise self._needs_docker(f"deploy_model runs the Docker image {image!r} as a model container")

    def get_num_replicas(self, name: str, version: str) -> int:
        raise self._needs_docker("replicas are Docker containers")

    def set_num_replicas(self, name: str, version: str, input_type: str, image: str, num_replicas: int) -> None:
        raise self._needs_docker("replicas are Docker containers")

    def stop_models(self, models: dict[str, list[str]]) -> None:
        raise ClipperException(
            "clipperd serves the models of its repository, not containers: unload or delete them with "
            "clipperd_admin (ClipperdAdmin.unload_model / delete_model_version / delete_model)"
        )

    def stop_all_model_containers(self) -> None:
        self.stop_models({})

    # ---- addresses --------------------------------------------------------------------------

    def get_admin_addr(self) -> str:
        return self.http_address

    def get_query_addr(self) -> str:
        return self.http_address

    def get_metric_addr(self) -> str:
        return self.metrics_address
