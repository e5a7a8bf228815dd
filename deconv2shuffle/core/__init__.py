"""The conversion core: keys, specs, model sources, planning, conversion and verification.

No checkpoint files and no terminal: state_dicts, specs and models in; state_dicts, plans and
reports out. The pipeline reads and writes files around it; the public names are re-exported
from the package's top level.
"""
