"""The research harness: the federated protocol in one process, FedFR against its baselines.

``fedfr simulate`` (:func:`fedfr.sim.runner.simulate`) runs every method on the same data, the
same pretrained model and the same budget, evaluates generic and personalized metrics after
every round and writes ``results.json``, ``results.md`` and plots (:mod:`fedfr.sim.report`).
"""

from fedfr.sim.profiles import SIM_PROFILES, SimProfile, get_sim_profile
from fedfr.sim.runner import SimConfig, simulate

__all__ = ["SIM_PROFILES", "SimConfig", "SimProfile", "get_sim_profile", "simulate"]
