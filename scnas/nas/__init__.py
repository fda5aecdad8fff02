"""SCNAS search space: operations, cells, samplers (Algorithm 1), the search network and genotypes."""

from scnas.nas.cells import CELL_TYPES, MACRO, NUM_NODES, cell_edges
from scnas.nas.genotype import (
    Genotype,
    GenotypeError,
    genotype_from_dict,
    genotype_to_dict,
    load_genotype,
    save_genotype,
)
from scnas.nas.operations import OPERATIONS, OPS
from scnas.nas.sampling import SAMPLINGS, EdgeSample, sample_edges, sample_two
from scnas.nas.search_network import SearchNetwork

__all__ = [
    "CELL_TYPES",
    "MACRO",
    "NUM_NODES",
    "OPERATIONS",
    "OPS",
    "SAMPLINGS",
    "EdgeSample",
    "Genotype",
    "GenotypeError",
    "SearchNetwork",
    "cell_edges",
    "genotype_from_dict",
    "genotype_to_dict",
    "load_genotype",
    "sample_edges",
    "sample_two",
    "save_genotype",
]
