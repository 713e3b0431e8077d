"""Loading a checkpoint the way users pass it: a hub id, a local folder saved with
``save_pretrained``, or ``random:<preset>`` (the same architecture with seeded random weights)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevfm.export.errors import CheckpointError
from edgevfm.runtime.errors import UnknownNameError

from . import families  # noqa: F401  (registers the family specs)
from .presets import verify
from .spec import FAMILIES, FamilySpec, family_for_model_type, find_preset, is_preset
# keys that saving or loading changes without changing the model
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures",
                         "_attn_implementation_autoset"}


@dataclass
class Checkpoint:
    """A loaded model in eval mode, its tokenizer / processor (``assets``) and where it came from."""

    spec: FamilySpec
    model: Any
    assets: dict[str, Any]
    source: dict[str, Any]
    # export choices a family reads in ``parts`` (llm_graph: "builder" or "plain")
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.spec.name


def config_sha256(config) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    for sub in data.values():
        if isinstance(sub, dict):
            for key in _VOLATILE_CONFIG_KEYS:
                sub.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint(model: str, family: str | None = None, revision: str | None = None) -> Checkpoint:
    """Load ``model``: ``random:<preset>``, a local folder, or a hub id (``org/name``).

    ``family`` overrides the family read from the checkpoint's config. Raises ``CheckpointError``
    for a missing or corrupt checkpoint, ``UnknownNameError`` for an unknown family or preset.
    """
    if family is not None:
        FAMILIES.get(family)  # unknown family: the error lists the valid ones
    if is_preset(model):
        preset_family, preset = find_preset(model)
        _check_family(model, family, preset_family)
        spec = FAMILIES.get(preset_family)()
        revision = None
        if preset.folder:  # trained weights in the repository: the same path as a user's folder
            torch_model, assets = _load_folder(spec, str(verify(preset.folder)), None, preset)
        else:
            torch_model, assets = spec.build_random(preset)
    else:
        detected = _detect_family(model, revision)
        _check_family(model, family, detected)
        spec = FAMILIES.get(detected)()
        torch_model, assets = _load_folder(spec, model, revision)
    torch_model.eval()
    source = {"id": model, "revision": revision, "config_sha256": config_sha256(torch_model.config)}
    return Checkpoint(spec, torch_model, assets, source)


def _load_folder(spec: FamilySpec, model: str, revision: str | None, preset=None):
    if Path(model).is_dir():
        _check_files(model, spec)
    try:
        return spec.load_preset(preset, model) if preset else spec.load_pretrained(model, revision)
    except Exception as exc:  # transformers, safetensors and torch raise many types here
        raise CheckpointError(
            f"could not load the {spec.name} checkpoint {model!r}: {exc}. Expected a folder saved with "
            "save_pretrained (config.json, weights, tokenizer, preprocessor_config.json or processor_config.json) or a reachable hub id"
        ) from exc


def reference_config_sha256(model: str, revision: str | None = None) -> str:
    """The config hash ``load_checkpoint(model)`` would record, without building the model."""
    if is_preset(model):
        family, preset = find_preset(model)
        if preset.folder:
            from transformers import AutoConfig

            return config_sha256(AutoConfig.from_pretrained(str(verify(preset.folder))))
        config, _ = FAMILIES.get(family)().random_config(preset)
        return config_sha256(config)
    _detect_family(model, revision)  # the same errors as a full load
    from transformers import AutoConfig

    return config_sha256(AutoConfig.from_pretrained(model, revision=revision))


def _check_family(model: str, wanted: str | None, found: str) -> None:
    if wanted is not None and wanted != found:
        raise CheckpointError(f"--family {wanted} does not fit {model!r}, which is a {found} checkpoint: leave "
                              f"--family out, or pass a {wanted} checkpoint")


def _check_files(folder: str, spec: FamilySpec) -> None:
    """A local folder must hold every file the family loads: transformers would otherwise build a
    default tokenizer or processor silently (every label the same ids)."""
    missing = [" or ".join(choice) for choice in spec.required_files
               if not any((Path(folder) / name).is_file() for name in choice)]
    if missing:
        raise CheckpointError(f"checkpoint folder {folder!r} lacks {'; '.join(missing)}, which the {spec.name} "
                              "family needs: save the tokenizer and processor beside the model "
                              "(tokenizer.save_pretrained(folder), processor.save_pretrained(folder))")


def _detect_family(model: str, revision: str | None) -> str:
    path = Path(model)
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise CheckpointError(f"checkpoint folder {model!r} does not exist: pass a folder saved with save_pretrained, a hub id or random:<preset>")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{model!r} has no config.json: expected a folder saved with save_pretrained")
        try:
            config = json.loads((path / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{model!r}/config.json is not valid JSON ({exc}): the checkpoint is corrupt") from None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if not isinstance(model_type, str):
            raise CheckpointError(f"{model!r}/config.json has no model_type string (it holds "
                                  f"{type(config).__name__ if not isinstance(config, dict) else sorted(config)[:8]}): "
                                  "expected a config saved by transformers' save_pretrained")
    else:
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(model, revision=revision).model_type
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"could not read the config of {model!r} from the hub ({exc}): check the id and the network, "
                "or pass a local folder saved with save_pretrained, or random:<preset> offline"
            ) from exc
    try:
        return family_for_model_type(model_type)
    except ValueError:
        supported = sorted(t for _, cls in FAMILIES.items() for t in cls.model_types)
        raise UnknownNameError("model_type", str(model_type), supported) from None
