"""Settings: elastask.yaml, validated at load, with ``ELASTASK_*`` environment overrides.

The file comes from ``--config`` or ``ELASTASK_CONFIG`` (default ``./elastask.yaml``; a missing
default file means "all defaults"). Any key can be overridden by one rule: ``ELASTASK_`` + the key
upper-cased with dots as underscores (``elasticsearch.host`` -> ``ELASTASK_ELASTICSEARCH_HOST``).
Secrets are held in :class:`Secret`, which never prints its value.

- settings.py: every setting declared once (key, kind, default, doc) as a field of Settings;
- values.py: how each kind is read and what a bad value is told;
- load.py: the file and the environment into Settings, and the checks that span keys;
- listing.py: elastask.yaml, rendered from the declarations.
"""

from elastask.config.load import DEFAULT_PATH, SCHEMA, known_env_names, load_settings, parse_settings
from elastask.config.settings import ElasticsearchSettings, KibanaNode, KibanaSettings, Settings
from elastask.config.values import ENV_PREFIX, Secret, env_name
from elastask.task_types import COSTS, TaskTypeSettings

__all__ = [
    "COSTS",
    "DEFAULT_PATH",
    "ENV_PREFIX",
    "SCHEMA",
    "ElasticsearchSettings",
    "KibanaNode",
    "KibanaSettings",
    "Secret",
    "Settings",
    "TaskTypeSettings",
    "env_name",
    "known_env_names",
    "load_settings",
    "parse_settings",
]
