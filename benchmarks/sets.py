"""The parameter sets of the benchmark: shapes of real models, float32 values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SETS", "ParamSet", "resnet18_shapes", "transformer_shapes", "large_shapes"]

Shape = tuple[int, ...]


def resnet18_shapes() -> list[Shape]:
    """The 62 parameter tensors of torchvision's ResNet-18 (11,689,512 values)."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            first_in = in_ch if block == 0 else out_ch
            shapes += [(out_ch, first_in, 3, 3), (out_ch,), (out_ch,),
                       (out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]
            if block == 0 and (stride != 1 or in_ch != out_ch):
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
        in_ch = out_ch
    return shapes + [(1000, 512), (1000,)]


def transformer_shapes(layers: int = 16, width: int = 128, vocab: int = 1000,
                       context: int = 512) -> list[Shape]:
    """A small pre-LN transformer encoder with a classifier head: 200 tensors, 3,495,400 values.

    Embeddings (token, position, their LayerNorm), ``layers`` blocks of 12 tensors
    (fused QKV, output projection, two LayerNorms, a 4x MLP, with biases), the final
    LayerNorm and an untied output layer: the many small tensors of a transformer.
    """
    shapes: list[Shape] = [(vocab, width), (context, width), (width,), (width,)]
    for _ in range(layers):
        shapes += [
            (3 * width, width), (3 * width,),      # fused query/key/value projection
            (width, width), (width,),              # output projection
            (width,), (width,),                    # LayerNorm 1
            (4 * width, width), (4 * width,),      # MLP up
            (width, 4 * width), (width,),          # MLP down
            (width,), (width,),                    # LayerNorm 2
        ]
    return shapes + [(width,), (width,), (vocab, width), (vocab,)]


def large_shapes() -> list[Shape]:
    """100 matrices, 100,000,000 values (400 MB in float32): larger than any L3 cache here."""
    return [(1000, 1200)] * 50 + [(1000, 800)] * 50


@dataclass(frozen=True)
class ParamSet:
    """A named list of parameter shapes."""

    name: str
    label: str
    shapes: tuple[Shape, ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def nbytes(self) -> int:
        return 4 * self.numel  # float32

    def arrays(self, seed: int, scale: float = 1.0) -> list[np.ndarray]:
        """Float32 arrays of these shapes, normal with standard deviation ``scale``."""
        rng = np.random.default_rng(seed)
        return [(scale * rng.standard_normal(s, dtype=np.float32)).astype(np.float32)
                for s in self.shapes]


SETS = {
    "resnet18": ParamSet("resnet18", "ResNet-18 (62 tensors, 11.69M)", tuple(resnet18_shapes())),
    "transformer": ParamSet("transformer", "transformer (200 tensors, 3.50M)",
                            tuple(transformer_shapes())),
    "large": ParamSet("large", "large (100 tensors, 100M, 400 MB)", tuple(large_shapes())),
}
