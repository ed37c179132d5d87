"""Datasets CCExpert trains and evaluates on, as plain typed records (no torch: training wraps them later).

- :mod:`~ccexpert_core.data.levircc`: LEVIR-CC's ``LevirCCcaptions.json`` + ``images/<split>/A|B/``, and its
  conversion to CC JSON.
- :mod:`~ccexpert_core.data.cc_json`: CC-Foundation-style JSON lists of pairs.
- :mod:`~ccexpert_core.data.mixture`: YAML mixtures of CC JSON files with sampling strategies.
- :mod:`~ccexpert_core.data.samples`: :class:`PairSample`, and ``flatten`` / ``random_choice`` into
  :class:`CaptionSample` s.
- :mod:`~ccexpert_core.data.stats`: what ``ccexpert dataset-info`` reports.
"""

from ccexpert_core.data.cc_json import read_cc_json, write_cc_json
from ccexpert_core.data.levircc import LevirCCEntry, convert_levircc, levircc_pairs, read_levircc
from ccexpert_core.data.mixture import SamplingStrategy, load_mixture
from ccexpert_core.data.samples import CaptionSample, PairSample, flatten, random_choice
from ccexpert_core.data.stats import dataset_info

__all__ = [
    "CaptionSample",
    "LevirCCEntry",
    "PairSample",
    "SamplingStrategy",
    "convert_levircc",
    "dataset_info",
    "flatten",
    "levircc_pairs",
    "load_mixture",
    "random_choice",
    "read_cc_json",
    "read_levircc",
    "write_cc_json",
]
