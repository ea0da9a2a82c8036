"""Model hyper-parameters, with fairchem's AllScAIP names and defaults."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

SUPPORTED_ACTIVATIONS = ("gelu",)
SUPPORTED_NORMALIZATIONS = ("rmsnorm",)


def check_keys(values: Iterable[str], known: Iterable[str], where: str) -> None:
    """Refuse keys that are not ``known``, naming each and the closest valid key (typos in a
    config file would otherwise silently fall back to a default)."""
    known = sorted(known)
    unknown = sorted(set(values) - set(known))
    if not unknown:
        return
    described = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: "
                     f"{', '.join(described)}; valid keys: {', '.join(known)}")


@dataclass
class ModelConfig:
    """Architecture of one AllScAIP model. Lengths in Angstrom.

    Field names follow fairchem's backbone configuration so that a fairchem
    ``model_config["backbone"]`` maps onto this class one to one.
    """

    hidden_size: int
    num_layers: int
    atten_num_heads: int
    max_radius: float
    knn_k: int
    max_num_elements: int = 110
    direct_forces: bool = False
    regress_forces: bool = True
    regress_stress: bool = False
    use_node_path: bool = True
    use_freq_mask: bool = True
    use_sincx_mask: bool = True
    use_residual_scaling: bool = True
    use_envelope: bool = True
    knn_soft: bool = True
    knn_sigmoid_scale: float = 0.2
    knn_lse_scale: float = 0.1
    knn_use_low_mem: bool = True
    knn_delta: int = 20
    distance_function: str = "gaussian"
    freequency_list: list[int] = field(default_factory=lambda: [20, 10, 4, 10, 20])
    attn_num_freq: int = 32
    node_direction_expansion_size: int = 10
    edge_direction_expansion_size: int = 6
    edge_distance_expansion_size: int = 512
    output_hidden_layer_multiplier: int = 2
    ffn_hidden_layer_multiplier: int = 2
    energy_reduce: str = "sum"
    activation: str = "gelu"
    normalization: str = "rmsnorm"
    # Our extension, not in fairchem: weight the bond-orientational-order average by the
    # edge envelope exp(-x^2/(1-x^2)) instead of counting every kept edge as 1. fairchem's
    # hard count jumps when an edge enters or leaves the graph, so its energy is not
    # continuous in the positions; the weighted average is (needed for NVE conservation).
    smooth_node_order: bool = False
    # Ours, not in fairchem: 0 = dense node attention (fairchem's); n > 0 = query blocks of n
    # atoms, the sinc bias made per block and, in inference, blocks recomputed in the backward
    # pass, so memory grows ~linearly in N. Same function (to round-off); a runtime choice.
    node_attention_block_size: int = 0
    # Ours: a short-range repulsive wall added to the energy, [Z_a, Z_b, onset A, strength
    # eV/A^3] per element pair (allscaip.repulsion); empty = none (fairchem's model).
    repulsion: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.atten_num_heads

    def validate(self) -> None:
        problems = []
        if self.hidden_size % self.atten_num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by "
                            f"atten_num_heads {self.atten_num_heads}")
        if self.use_freq_mask and sum(self.freequency_list) != self.head_dim:
            problems.append(f"sum(freequency_list)={sum(self.freequency_list)} must equal "
                            f"hidden_size/atten_num_heads={self.head_dim}")
        if self.activation not in SUPPORTED_ACTIVATIONS:
            problems.append(f"activation {self.activation!r} not supported "
                            f"(supported: {SUPPORTED_ACTIVATIONS})")
        if self.normalization not in SUPPORTED_NORMALIZATIONS:
            problems.append(f"normalization {self.normalization!r} not supported "
                            f"(supported: {SUPPORTED_NORMALIZATIONS})")
        if self.distance_function != "gaussian":
            problems.append(f"distance_function {self.distance_function!r} not supported")
        if not (self.knn_soft and self.knn_use_low_mem):
            problems.append("only the soft, low-memory k-NN graph (fairchem's inference "
                            "default) is supported")
        if self.energy_reduce != "sum":
            problems.append("only energy_reduce='sum' is supported")
        if self.node_attention_block_size < 0:
            problems.append("node_attention_block_size must be >= 0 (0: dense)")
        for entry in self.repulsion:
            if (len(entry) != 4 or not all(1 <= int(z) < self.max_num_elements and int(z) == z for z in entry[:2])
                    or not 0 < entry[2] <= self.max_radius or entry[3] < 0):
                problems.append(f"repulsion entry {entry} must be [Z_a, Z_b, onset, strength] with elements "
                                f"1..{self.max_num_elements - 1}, 0 < onset <= max_radius "
                                f"({self.max_radius}) and strength >= 0")
        if self.repulsion and self.direct_forces:
            problems.append("repulsion needs conserving forces (direct_forces false)")
        if problems:
            raise ValueError("Invalid AllScAIP configuration: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "the model configuration",
                  ignore: Iterable[str] = ()) -> "ModelConfig":
        """Build from a dict. Every key must be a field, except those in ``ignore`` (a fairchem
        checkpoint's own run-time keys); anything else is an error naming the closest field."""
        names = {f.name for f in fields(cls)}
        ignore = set(ignore)
        check_keys(set(values) - ignore, names, where)
        return cls(**{k: v for k, v in values.items() if k not in ignore})
