"""Build a `Dia2Model` from `config.json` + `model.safetensors` holding one copy of the weights.

The model is built on the meta device (no memory), then every tensor is read
from the safetensors file on its own, cast, checked against the shape the
config implies, and assigned as the parameter itself. Peak memory is the
model plus one tensor, never two copies of the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from voice_agent.tts.dia2.config import Dia2Config
from voice_agent.tts.dia2.errors import CheckpointMismatchError, NotADia2CheckpointError
from voice_agent.tts.dia2.model import Dia2Model

log = logging.getLogger(__name__)


def _meta_model(config: Dia2Config) -> Dia2Model:
    with torch.device("meta"):
        return Dia2Model(config)


def _install(model: Dia2Model, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))


def load_model(
    config: Dia2Config,
    weights_path: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Dia2Model:
    """Load the official weights into our module tree.

    Raises:
        NotADia2CheckpointError: the file is missing or not safetensors.
        CheckpointMismatchError: a tensor is missing, unexpected, or has a shape the
            config does not imply; the message names the tensor and both shapes.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise NotADia2CheckpointError(
            f"{weights_path} does not exist; a Dia2 checkpoint needs model.safetensors."
        )
    model = _meta_model(config)
    expected = dict(model.named_parameters())
    try:
        handle = safe_open(str(weights_path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise NotADia2CheckpointError(
            f"{weights_path} is not a readable safetensors file: {exc}"
        ) from exc
    with handle as f:
        names = set(f.keys())
        unexpected = sorted(names - expected.keys())
        if unexpected:
            raise CheckpointMismatchError(
                f"{weights_path} has tensor {unexpected[0]!r} that the config does not describe"
                + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                + "; config.json and model.safetensors come from different models.",
                tensor=unexpected[0],
            )
        missing = sorted(expected.keys() - names)
        if missing:
            raise CheckpointMismatchError(
                f"{weights_path} lacks tensor {missing[0]!r} required by config.json"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ".",
                tensor=missing[0],
            )
        for name, param in expected.items():
            shape = tuple(f.get_slice(name).get_shape())
            if shape != tuple(param.shape):
                raise CheckpointMismatchError(
                    f"Tensor {name!r} in {weights_path} has shape {list(shape)} but config.json implies "
                    f"{list(param.shape)}; config.json and model.safetensors do not match.",
                    tensor=name,
                )
            _install(model, name, f.get_tensor(name).to(device=device, dtype=dtype))
    return model.eval()


def random_model(
    config: Dia2Config,
    *,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    init: Callable[[str, torch.Tensor], None] | None = None,
) -> Dia2Model:
    """A model with random weights, each initialised straight into its final tensor.

    Used by the benchmark to build the 2B dimensions without a checkpoint:
    embeddings N(0, 1), linears N(0, 1/fan_in), norms 1.
    """
    # A CPU generator keeps the weights reproducible; CUDA uses its own default generator.
    generator = torch.Generator(device="cpu").manual_seed(seed) if device.type == "cpu" else None
    model = _meta_model(config)
    for name, param in list(model.named_parameters()):
        tensor = torch.empty(param.shape, device=device, dtype=dtype)
        if init is not None:
            init(name, tensor)
        elif name.endswith("norm.weight"):
            tensor.fill_(1.0)
        elif "embed" in name and "proj" not in name:
            tensor.normal_(0.0, 1.0, generator=generator)
        else:
            tensor.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
        _install(model, name, tensor)
    return model.eval()
