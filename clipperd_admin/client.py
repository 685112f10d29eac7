"""ClipperdAdmin: deploy models into a clipperd model repository and manage their versions, in
the spirit of Clipper's clipper_admin (deploy a Python closure or a framework model, set the
served version, roll back), on Triton's ground: files in the repository plus the KServe v2
repository API (explicit mode) or the server's own rescans (poll mode)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from backends.common.config import config_to_json
from backends.common.versions import select_versions
from backends.proto import model_config_pb2 as mc
from clipperd_admin import frameworks
from clipperd_admin.applications import ApplicationAdmin
from clipperd_admin.errors import AdminError, LoadFailed, ModelClash, ModelNotFound, ServerError
from clipperd_admin.python_function import function_bundle
from clipperd_admin.server_api import ModelStatus, ServerApi, auth_headers
from clipperd_admin.specs import Serving, TensorSpec, check_model_name, check_version, signature, specs
from clipperd_admin.staging import Bundle, RepositoryFiles

MODES = ("explicit", "poll")
TensorsSpec = str | Sequence[TensorSpec | Sequence[Any]]  # a str: one of Clipper's input types ("doubles")
Row = tuple[int | None, str, str]  # (version, state, reason) of a repository index row


class ClipperdAdmin:
    """Admin client of one clipperd server and its model repository (a local folder).

    ``control_mode``: ``explicit`` or ``poll`` as the server was started; None asks the server.
    ``timeout``: seconds a deploy or version change waits for the server to serve it.
    ``applications``: the same server's applications (register, link, pin, roll back...).
    ``headers`` / ``token``: credentials for a server whose management is closed to this client
    (a restricted API's header; the server's ``--management-token``), sent with every call."""

    def __init__(
        self,
        repository: Path | str,
        http_url: str = "127.0.0.1:8000",
        *,
        control_mode: str | None = None,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        if control_mode is not None and control_mode not in MODES:
            raise ValueError(f"control_mode must be 'explicit', 'poll' or None, not {control_mode!r}")
        self.files = RepositoryFiles(Path(repository))
        sent = auth_headers(headers, token)
        self.api = ServerApi(http_url, timeout=max(timeout, 5.0), headers=sent)  # a load lasts as long as the load
        self.timeout = timeout
        self._mode = control_mode
        self.applications = ApplicationAdmin(http_url, timeout_s=max(timeout, 5.0), headers=sent)

    # ---- deploying ------------------------------------------------------------------------

    def deploy_python_function(
        self,
        name: str,
        func: Callable[..., Any],
        inputs: TensorsSpec,
        outputs: TensorsSpec,
        *,
        version: int | None = None,
        max_batch_size: int = 64,
        batch_delay_us: int | None = None,
        instance_count: int = 1,
        execution_mode: str = "event_loop",
        requirements: Sequence[str] = (),
        parameters: Mapping[str, str] | None = None,
    ) -> int:
        """Serves ``func(*inputs) -> outputs`` on whole batches of numpy arrays; returns the version.

        ``inputs`` / ``outputs``: TensorSpecs or ``(name, data_type, dims)`` tuples, or one of
        Clipper's type names ("ints", "floats", "doubles", "bytes", "strings") for a single
        tensor named INPUT / OUTPUT."""
        serving = Serving(max_batch_size, batch_delay_us, instance_count, "KIND_CPU", parameters or {})
        ins, outs = specs(inputs, "input"), specs(outputs, "output")
        return self._deploy(
            name, version, lambda: function_bundle(name, func, ins, outs, serving, execution_mode, requirements)
        )

    def deploy_pytorch_model(
        self,
        name: str,
        module: Any,
        example_input: Any,
        *,
        how: str = "trace",
        version: int | None = None,
        max_batch_size: int = 64,
        batch_delay_us: int | None = None,
        instance_count: int = 1,
        instance_kind: str = "KIND_CPU",
    ) -> int:
        """Serves a torch.nn.Module as TorchScript (``how``: trace with ``example_input``, or
        script); tensors INPUT__i / OUTPUT__i with the example's types and shapes."""
        serving = Serving(max_batch_size, batch_delay_us, instance_count, instance_kind)
        return self._deploy(name, version, lambda: frameworks.torch_bundle(name, module, example_input, serving, how))

    def deploy_onnx_model(
        self,
        name: str,
        model: bytes | str | Path | Any,
        *,
        version: int | None = None,
        max_batch_size: int | None = None,
        batch_delay_us: int | None = None,
        instance_count: int = 1,
        instance_kind: str = "KIND_CPU",
    ) -> int:
        """Serves an ONNX graph (a path, its bytes or an onnx.ModelProto); the server completes the
        config's tensors from the graph (and batching, when its first dimensions are dynamic and
        ``max_batch_size`` is None)."""
        serving = Serving(max_batch_size or 0, batch_delay_us, instance_count, instance_kind)
        return self._deploy(name, version, lambda: frameworks.onnx_bundle(name, model, serving))

    def deploy_tensorflow_model(
        self,
        name: str,
        saved_model_dir: str | Path,
        *,
        signature_name: str = "serving_default",
        inputs: TensorsSpec | None = None,
        outputs: TensorsSpec | None = None,
        version: int | None = None,
        max_batch_size: int = 64,
        batch_delay_us: int | None = None,
        instance_count: int = 1,
        instance_kind: str = "KIND_CPU",
    ) -> int:
        """Serves a SavedModel folder (copied); tensors from its signature unless given."""
        serving = Serving(max_batch_size, batch_delay_us, instance_count, instance_kind)
        given = None
        if inputs is not None or outputs is not None:
            given = (specs(inputs or (), "input"), specs(outputs or (), "output"))
        return self._deploy(
            name,
            version,
            lambda: frameworks.tensorflow_bundle(name, Path(saved_model_dir), serving, signature_name, given),
        )

    def deploy_sklearn_model(
        self,
        name: str,
        estimator: Any,
        example_input: Any,
        *,
        method: str = "predict",
        version: int | None = None,
        max_batch_size: int = 64,
        batch_delay_us: int | None = None,
        instance_count: int = 1,
    ) -> int:
        """Serves ``estimator.<method>`` (joblib); input FEATURES and output OUTPUT take their types
        and widths from calling it on ``example_input`` (rows of features)."""
        serving = Serving(max_batch_size, batch_delay_us, instance_count)
        return self._deploy(
            name, version, lambda: frameworks.sklearn_bundle(name, estimator, method, example_input, serving)
        )

    # ---- versions and models --------------------------------------------------------------

    def list_models(self) -> list[ModelStatus]:
        """The server's repository index: every model and version with its state and reason."""
        return self.api.index()

    def get_model_config(self, name: str, *, from_server: bool = False) -> dict[str, Any]:
        """The model's config.pbtxt as a dict (field names as in the file, the JSON the server's
        config endpoint answers); ``from_server``: the config the server serves, completed and
        with defaults filled in."""
        check_model_name(name)
        if from_server:
            return self.api.model_config(name)
        return config_to_json(self.files.read_config(name))

    def model_versions(self, name: str) -> list[int]:
        """The version folders in the repository."""
        check_model_name(name)
        return self.files.versions(name)

    def set_model_version(self, name: str, version: int) -> None:
        """Serves exactly ``version`` (version_policy: specific) and waits until the server does."""
        check_model_name(name)
        check_version(version)
        config = self.files.read_config(name)
        if version not in self.files.versions(name):
            raise ModelNotFound(f"model '{name}' has no version {version} (it has {self.files.versions(name)})")
        self._require_serving_mode()
        updated = _with_policy(config, [version])
        with self.files.locked():
            baseline = self._baseline(name)
            self.files.write_config(name, updated)
            try:
                self._serve(name, {version}, baseline, version)
            except AdminError:  # not loaded, or no answer: the repository goes back to what served
                self.files.write_config(name, config)
                self._serve_quietly(name, config)
                raise

    def rollback_model(self, name: str) -> int:
        """Serves the newest version older than the one served now; returns it."""
        check_model_name(name)
        current = max(_policy_versions(self.files.read_config(name), self.files.versions(name)), default=0)
        older = [v for v in self.files.versions(name) if v < current]
        if not older:
            raise AdminError(f"model '{name}' has no version older than {current} to roll back to")
        self.set_model_version(name, older[-1])
        return older[-1]

    def unload_model(self, name: str) -> None:
        """Stops serving the model (explicit mode; its files stay)."""
        check_model_name(name)
        if self._require_serving_mode() != "explicit":
            raise AdminError(
                f"cannot unload model '{name}': in poll mode the server serves whatever the repository holds "
                "(delete_model removes it)"
            )
        self.api.unload(name)

    def delete_model_version(self, name: str, version: int) -> None:
        """Removes a version folder; the server stops serving it (the next one serves instead)."""
        check_model_name(name)
        check_version(version)
        config, versions = self.files.read_config(name), self.files.versions(name)
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version {version} (it has {versions})")
        if versions == [version]:
            raise AdminError(f"version {version} is model '{name}''s only version: delete_model removes the model")
        pinned = list(config.version_policy.specific.versions)
        if pinned == [version]:
            raise AdminError(f"model '{name}' serves only version {version}: set another version first")
        mode = self._require_serving_mode()
        loaded = any(s.state == "READY" for s in self._rows(name))
        baseline = self._baseline(name)
        with self.files.locked():
            if version in pinned:
                self.files.write_config(name, _with_policy(config, [v for v in pinned if v != version]))
            self.files.remove(self.files.model_dir(name) / str(version))
            remaining = _policy_versions(self.files.read_config(name), self.files.versions(name))
            if mode == "poll" or loaded:
                self._serve(name, set(remaining), baseline)

    def delete_model(self, name: str) -> None:
        """Stops serving the model and removes its folder from the repository."""
        check_model_name(name)
        if not self.files.exists(name):
            raise ModelNotFound(f"model '{name}' is not in the repository {self.files.root}")
        mode = self._require_serving_mode()
        if mode == "explicit" and self._rows(name):
            self.api.unload(name)
        with self.files.locked():
            self.files.remove(self.files.model_dir(name))
        if mode == "poll" and not self.api.wait(lambda: not self.api.is_ready(name), self.timeout):
            raise AdminError(f"model '{name}' was removed but the server still serves it after {self.timeout}s")

    # ---- internals: deploy ------------------------------------------------------------------

    def _deploy(self, name: str, version: int | None, make: Callable[[], Bundle]) -> int:
        check_model_name(name)
        if version is not None:
            check_version(version)
        bundle = make()  # exports and validates; nothing is written yet
        self._plan(name, bundle, version)  # clashes raise before the repository is touched
        self._require_serving_mode()
        with self.files.locked():
            number, previous = self._plan(name, bundle, version)
            baseline = self._baseline(name)
            self._write(name, bundle, number, previous)
            wanted = set(_policy_versions(bundle.config, self.files.versions(name)))
            try:
                self._serve(name, wanted, baseline, number)
            except AdminError:  # not loaded, or no answer: the repository goes back to what served
                self._undo(name, number, previous)
                raise
        return number

    def _plan(self, name: str, bundle: Bundle, version: int | None) -> tuple[int, mc.ModelConfig | None]:
        """The version number the deploy writes and the model's config before it (None: new)."""
        if not self.files.exists(name):
            return version or 1, None
        previous = self.files.read_config(name)
        if signature(previous) != signature(bundle.config):
            raise ModelClash(_clash_text(name, previous, bundle.config))
        versions = self.files.versions(name)
        number = version or max(versions, default=0) + 1
        if number in versions:
            raise ModelClash(f"model '{name}' already has version {number} (versions: {versions})")
        if bundle.tensors is not None and bundle.tensors_of is not None and versions:
            existing = bundle.tensors_of(self.files.model_dir(name) / str(versions[-1]))
            if existing is not None and existing != bundle.tensors:
                raise ModelClash(
                    f"model '{name}' version {versions[-1]} has tensors {existing}, the new model {bundle.tensors}: "
                    "versions of one model share one config; deploy it under another name"
                )
        return number, previous

    def _write(self, name: str, bundle: Bundle, number: int, previous: mc.ModelConfig | None) -> None:
        versions = self.files.versions(name)
        newest = number > max(versions, default=0)
        # a deploy serves what it deploys: the newest under "latest", an older number pinned
        bundle.config.ClearField("version_policy")
        if previous is not None and newest and previous.version_policy.WhichOneof("policy_choice") != "specific":
            bundle.config.version_policy.CopyFrom(previous.version_policy)
        elif not newest:
            bundle.config.version_policy.specific.versions.append(number)
        if previous is None:
            self.files.add_model(name, bundle, number)
            return
        self.files.add_version(name, bundle, number)
        try:
            self.files.write_config(name, bundle.config)
        except BaseException:
            self.files.remove(self.files.model_dir(name) / str(number))
            raise

    def _undo(self, name: str, number: int, previous: mc.ModelConfig | None) -> None:
        """Takes a version the server did not load back out, so the repository is as it was."""
        if previous is None:
            self.files.remove(self.files.model_dir(name))
            if self._require_serving_mode() == "explicit":
                self._quietly(lambda: self.api.unload(name))
            return
        self.files.remove(self.files.model_dir(name) / str(number))
        self.files.write_config(name, previous)
        self._serve_quietly(name, previous)

    # ---- internals: the server --------------------------------------------------------------

    def _require_serving_mode(self) -> str:
        if self._mode is None:
            self._mode = self.api.control_mode()
        if self._mode not in MODES:
            raise AdminError(
                f"the server runs with --model-control-mode {self._mode}: it loads models only at start; "
                "restart it with --model-control-mode explicit or poll to deploy and change versions"
            )
        return self._mode

    def _baseline(self, name: str) -> set[Row]:
        """The index rows of ``name`` before a change: failures already listed are not new."""
        return {(s.version, s.state, s.reason) for s in self._rows(name)} if self._mode == "poll" else set()

    def _serve(self, name: str, wanted: set[int], baseline: set[Row], version: int | None = None) -> None:
        """Has the server serve exactly ``wanted`` of ``name``; LoadFailed with its reason if not."""
        if self._require_serving_mode() == "explicit":
            try:
                self.api.load(name)
            except ServerError as error:
                raise LoadFailed(name, version, self._reason(name, version) or error.message) from None
        failures: list[ModelStatus] = []

        def settled() -> bool:
            rows = self._rows(name)
            if {s.version for s in rows if s.state == "READY"} == wanted:
                return True
            failures.extend(s for s in rows if _new_failure(s, wanted, baseline))
            return bool(failures)

        if not self.api.wait(settled, self.timeout):
            raise LoadFailed(name, version, self._reason(name, version) or f"not served after {self.timeout}s")
        if failures:
            raise LoadFailed(name, failures[0].version, failures[0].reason)
        not_ready = [v for v in sorted(wanted) if not self.api.is_ready(name, v)]  # what clients will see
        if not_ready:
            raise LoadFailed(name, not_ready[0], self._reason(name, not_ready[0]) or "not ready")

    def _rows(self, name: str) -> list[ModelStatus]:
        return [s for s in self.api.index() if s.name == name]

    def _reason(self, name: str, version: int | None) -> str:
        rows = self._rows(name)
        exact = [s.reason for s in rows if s.version == version and s.reason]
        other = [s.reason for s in rows if s.reason and s.state != "READY" and s.reason != "unloaded"]
        return (exact or other or [""])[0]

    def _serve_quietly(self, name: str, config: mc.ModelConfig) -> None:
        wanted = set(_policy_versions(config, self.files.versions(name)))
        self._quietly(lambda: self._serve(name, wanted, self._baseline(name)))

    @staticmethod
    def _quietly(action: Callable[[], None]) -> None:
        with contextlib.suppress(AdminError):  # restoring after a failed change: that failure is what is raised
            action()


def _new_failure(status: ModelStatus, wanted: set[int], baseline: set[Row]) -> bool:
    """A version the change asks for (or the model as a whole) failed since the change began."""
    failed = status.state == "UNAVAILABLE" and bool(status.reason) and status.reason != "unloaded"
    concerned = status.version is None or status.version in wanted
    return failed and concerned and (status.version, status.state, status.reason) not in baseline


def _with_policy(config: mc.ModelConfig, versions: Iterable[int]) -> mc.ModelConfig:
    updated = mc.ModelConfig()
    updated.CopyFrom(config)
    updated.ClearField("version_policy")
    updated.version_policy.specific.versions.extend(sorted(versions))
    return updated


def _policy_versions(config: mc.ModelConfig, available: list[int]) -> list[int]:
    """The versions ``config``'s version_policy serves out of ``available`` (the server's rules)."""
    return select_versions(config.version_policy, available)[0]


def _tensor_text(tensor: mc.ModelInput | mc.ModelOutput) -> str:
    return f"{tensor.name}:{mc.DataType.Name(tensor.data_type)}{list(tensor.dims)}"


def _clash_text(name: str, old: mc.ModelConfig, new: mc.ModelConfig) -> str:
    def describe(config: mc.ModelConfig) -> str:
        kind = config.backend or config.platform
        tensors = [_tensor_text(t) for t in config.input] + [_tensor_text(t) for t in config.output]
        return f"{kind}, max_batch_size {config.max_batch_size}, tensors {tensors or 'from the model file'}"

    return (
        f"model '{name}' exists as {describe(old)}; the new version would be {describe(new)}. "
        "Versions of one model share one config: deploy it under another name, or delete the model first"
    )
