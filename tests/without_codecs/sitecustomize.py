"""Python runs this at start-up when this folder is on PYTHONPATH: the codecs named in $DENOISE_TEST_WITHOUT_CODECS
(comma-separated: ``libjpeg`` for pylibjpeg-libjpeg, the GPL extra; ``gdcm`` for python-gdcm) cannot be imported,
as if they were not installed. Tests start children (the node, a decoding script) with it, so that CI, which has
the GPL extra installed, shows what a plain ``pip install`` of the node accepts and decodes."""

import os
import sys
from importlib import metadata

_BLOCKED = {name.strip() for name in os.environ.get("DENOISE_TEST_WITHOUT_CODECS", "").split(",") if name.strip()}

for _module in _BLOCKED:
    sys.modules[_module] = None  # type: ignore[assignment]  # `import` now raises ModuleNotFoundError

if "libjpeg" in _BLOCKED:  # pylibjpeg finds its decoders by entry point: hide that one's too
    _entry_points = metadata.entry_points

    def _without_libjpeg(**kwargs):  # type: ignore[no-untyped-def]
        return metadata.EntryPoints(ep for ep in _entry_points(**kwargs) if not ep.value.startswith("libjpeg"))

    metadata.entry_points = _without_libjpeg
