"""Hydra search-path plugin: lets ``spktrain`` find the YAML configs shipped in ``schnetpack_ext``.

Hydra imports every module of the ``hydra_plugins`` namespace package at start-up, for every Hydra
application. This plugin acts only on SchNetPack's applications (``spktrain``, ``spkpredict``, ...,
recognised by SchNetPack's own config directory in the search path): it appends
``pkg://schnetpack_ext.configs`` so that ``spktrain experiment=energyloss_structure`` works after
``pip install energyloss-plugins[schnetpack]`` without ``--config-dir``. Appended last, it never
shadows SchNetPack's or the user's configs. Other Hydra apps are left untouched, and the module
imports nothing heavy.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "energyloss-plugins"
CONFIG_PATH = "pkg://schnetpack_ext.configs"


def is_schnetpack_app(search_path: ConfigSearchPath) -> bool:
    """True if the primary config comes from SchNetPack's package configs."""
    for element in search_path.get_path():
        path = (element.path or "").replace("\\", "/")
        if element.provider == "main" and (path.startswith("pkg://schnetpack.configs")
                                           or path.rstrip("/").endswith("/schnetpack/configs")):
            return True
    return False


class EnergyLossSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not is_schnetpack_app(search_path):
            return
        # The shipped configs use the ${el.split_file:...} resolver; register it (schnetpack, hence
        # torch, is already imported by a SchNetPack app, so importing the adapter costs nothing extra).
        from schnetpack_ext.resolvers import register_resolvers

        register_resolvers()
        search_path.append(provider=PROVIDER, path=CONFIG_PATH)
