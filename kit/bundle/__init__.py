"""Agent projects and the content-addressed bundles built from them."""

from kit.bundle.build import MANIFEST, PLUGIN_NAME, Bundle, build_bundle, open_bundle
from kit.bundle.config import (
    CONFIG_FILE,
    AgentConfig,
    Project,
    SandboxConfig,
    Skill,
    load_project,
    load_skills,
)
from kit.bundle.errors import BundleError, ConfigError

__all__ = [
    "CONFIG_FILE",
    "MANIFEST",
    "PLUGIN_NAME",
    "AgentConfig",
    "Bundle",
    "BundleError",
    "ConfigError",
    "Project",
    "SandboxConfig",
    "Skill",
    "build_bundle",
    "load_project",
    "load_skills",
    "open_bundle",
]
