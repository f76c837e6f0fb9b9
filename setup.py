"""Package metadata for nni-prune-tuners; the version lives in nni_prune_tuners/_version.py."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

_HERE = Path(__file__).parent
_VERSION = re.search(
    r'__version__ = "([^"]+)"', (_HERE / "nni_prune_tuners" / "_version.py").read_text()
)
assert _VERSION is not None

setup(
    name="nni-prune-tuners",
    version=_VERSION.group(1),
    description="Pruning-aware NNI tuner (Optuna TPE with a global-sparsity constraint) and assessor",
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="MIT",  # PEP 639: License-Expression in the METADATA (setuptools>=77)
    license_files=["LICENSE"],
    python_requires=">=3.11",
    packages=find_packages(include=["nni_prune_tuners", "nni_prune_tuners.*"]),
    package_data={"nni_prune_tuners": ["meta/*.yml", "py.typed"]},
    install_requires=[
        "nni==3.0",
        "optuna>=4.0",
        "numpy>=1.24",
        "schema>=0.7",
        "scipy>=1.10",
        "threadpoolctl>=3.1",
        "setuptools>=77,<81",
    ],
    extras_require={
        # nni_prune_tuners.trial (Pruner, profile); the checkout's reference trial also needs
        # scikit-learn and filelock, pinned in requirements.lock. Torch-Pruning's DepGraph finds
        # the channel groups and does the surgery of the `channel` method (docs/channel.md).
        "trial": ["torch>=2.1", "torch-pruning==1.6.1"],
        # nni_prune_tuners.trial.onnx: write a (pruned) model as ONNX with torch's exporter
        # (torch.export-based: onnxscript, onnx-ir) and time it under ONNX Runtime; exact pins,
        # those requirements.lock holds (docs/channel.md, "ONNX Runtime").
        "onnx": ["onnx==1.23.2", "onnxruntime==1.32.0", "onnxscript==0.7.2", "onnx-ir==1.1.0"],
    },
    entry_points={"console_scripts": ["nni-prune-tuners=nni_prune_tuners.__main__:main"]},
)
