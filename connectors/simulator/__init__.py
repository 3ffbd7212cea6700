"""The traffic simulator: four regions' baseline traffic with scripted incidents and their ground truth.

``profile``: expected flow per port and hour (schemas/reference/flow_profile.json);
``people``: travellers, crews, flights and vessels; ``traffic``: the baseline,
an hour at a time; ``scenarios``: incidents a-j of docs/scenarios.md;
``truth``: the ground-truth file; ``engine``: merging, pacing, publishing.
"""
from connectors.simulator.engine import Options, Simulation, SimulationError  # noqa: F401
from connectors.simulator.scenarios import SCENARIOS, UnknownScenario  # noqa: F401
