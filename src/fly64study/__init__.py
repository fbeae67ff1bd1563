"""The fly64 dose/overlap ptychography study: simulation, overlap views and their data contract.

One module per concern; imports run one way (physics imports nothing of ours, simulate and
overlap import physics and contract, nothing imports ``stages/``).
"""
