"""torch.onnx's dynamo exporter at the opset every fusion-ser graph uses, with its notices kept out of the terminal."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator

import torch
from torch import nn

OPSET = 18


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Keep the exporter's own notices (optional torchvision ops, axis renaming, deprecations inside torch) out of
    the user's terminal; its errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for message in (".*axis name.*", ".*LeafSpec.*", ".*mismatched key_padding_mask.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        logger.setLevel(level)


def export_program(graph: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
                   dynamic: dict) -> Any:
    """The ONNXProgram of `graph` on `inputs`; the exporter's exceptions (of many types) pass to the caller."""
    with quiet_exporter():
        return torch.onnx.export(graph, inputs, input_names=names, output_names=outputs, dynamic_shapes=dynamic,
                                 opset_version=OPSET, dynamo=True, verbose=False, report=False)
