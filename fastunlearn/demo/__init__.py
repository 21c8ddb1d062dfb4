"""The end-to-end demo: unlearning on scikit-learn's bundled digits with every method.

``fastunlearn demo`` (or ``make demo``) trains a classifier and a VAE, the retrained gold standard,
runs each method, evaluates them (:mod:`fastunlearn.eval`) and writes a report. Needs the ``demo``
extra (scikit-learn, scipy, matplotlib); no download happens at run time.
"""

from fastunlearn.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
