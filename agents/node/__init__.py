"""Node services: one peer, orderer or storage node run from its own configuration.

``emrshare node start --config FILE`` (:func:`start_node`), ``emrshare node
status`` and ``emrshare node config`` (:func:`export_node`); the swarm's
``--processes`` children run through the same code (:func:`swarm_node_config`,
:func:`build_agent`). Modules: ``config`` (the TOML file, environment
overrides, unlocking the key store), ``roles`` (building and running a role's
agent: the one code path), ``service`` (signals, graceful stop, the control
socket and metrics endpoint), ``metrics`` (Prometheus text format), ``http``
(the tiny GET-only server), ``export`` (configs for a swarm's agents),
``processes`` (stopping node processes this process started).
See docs/deploy.md.
"""

from .config import NodeConfig as NodeConfig
from .config import NodeConfigError as NodeConfigError
from .config import load_config as load_config
from .export import export_node as export_node
from .export import swarm_node_config as swarm_node_config
from .roles import RoleAgent as RoleAgent
from .roles import RoleSettings as RoleSettings
from .roles import build_agent as build_agent
from .service import NodeService as NodeService
from .service import start_node as start_node
