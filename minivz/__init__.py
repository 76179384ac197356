"""minivz: learn how to verbalize interaction logs for LLM-based recommendation.

Importing this package is cheap on purpose: no torch, no model, no kernel
compilation. Heavy modules are imported by the functions that need them.
"""

__version__ = "0.1.0"
