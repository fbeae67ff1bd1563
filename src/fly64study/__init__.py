"""The fly64 dose/overlap ptychography study: simulation, overlap views and their data contract.

One module per concern; imports run one way (physics imports nothing of ours, simulate and
overlap import physics and contract, nothing imports ``stages/``).

Importing the package pins the numerics first (:mod:`fly64study.numerics`): the kernel
dispatchers of numpy, torch and their BLAS read their settings when they load.
"""
from fly64study import numerics as _numerics

_numerics.pin()
