"""The study's models, one table: what each is called everywhere, what it is, and how it is shown.

Comparison (:mod:`fly64study.compare`), report (:mod:`fly64study.report`), plots and products read
their names, colours, file stems, deltas and kinds here, so a new model is one entry below plus its
own module and stage. Rows come in this order in every table and plot.
"""
from __future__ import annotations

from dataclasses import dataclass

# what a model is made of: a trained network (gridsize 2 on the view's training split), that network
# refined on the test split's counts, LSQML started from its field, the gridsize-1 network, or LSQML alone
KINDS = ("trained", "refined", "hybrid", "gridsize1", "iterative")


@dataclass(frozen=True)
class Model:
    name: str  # as every table, plot, product and metric names it
    what: str  # one line for the glossary
    kind: str  # one of KINDS
    network: str | None  # the PINN network it comes from (fly64study.networks); None: no network
    colour: str  # matplotlib colour, in every plot
    stem: str  # product file stem: products/<stem>[_seed<s>].h5
    made_from: str | None = None  # the model it is made from, seed by seed (its deltas are paired)
    deltas: tuple[str, ...] = ()  # the report gives <name> - <each of these>, per job

    @property
    def pinn_based(self) -> bool:
        """A network's reconstruction, or one started from it (BP-UNet-gs1 is not counted)."""
        return self.network is not None and self.kind != "gridsize1"


MODELS = (
    Model("PtychoPINN", "the published PtychoPINN network (Hoidn et al. 2023: one encoder over the group's "
          "C patterns, amplitude and phase decoders), gridsize 2, trained on the view's training split",
          "trained", "ptychopinn", "tab:red", "ptychopinn", deltas=("BP-UNet", "LSQML")),
    Model("PtychoPINN+refine", "PtychoPINN fitted a few more epochs to the test split's own counts (never its truth)",
          "refined", "ptychopinn", "tab:purple", "ptychopinn_refine", made_from="PtychoPINN",
          deltas=("PtychoPINN", "LSQML")),
    Model("PtychoPINN+LSQML", "pty-chi LSQML (tuned settings) started from PtychoPINN's stitched test field",
          "hybrid", "ptychopinn", "tab:green", "ptychopinn_lsqml", made_from="PtychoPINN",
          deltas=("PtychoPINN", "LSQML")),
    Model("BP-UNet", "the study's own physics-informed network: a U-Net over each pattern's back-projection "
          "through the known probe, the same loss and group canvas as PtychoPINN, gridsize 2",
          "trained", "bp_unet", "tab:brown", "bp_unet", deltas=("BP-UNet-gs1", "LSQML")),
    Model("BP-UNet+refine", "BP-UNet fitted a few more epochs to the test split's own counts (never its truth)",
          "refined", "bp_unet", "tab:pink", "bp_unet_refine", made_from="BP-UNet", deltas=("BP-UNet", "LSQML")),
    Model("BP-UNet+LSQML", "pty-chi LSQML (tuned settings) started from BP-UNet's stitched test field",
          "hybrid", "bp_unet", "tab:olive", "bp_unet_lsqml", made_from="BP-UNet", deltas=("BP-UNet", "LSQML")),
    Model("BP-UNet-gs1", "BP-UNet at gridsize 1 (single patterns, no overlap constraint), trained on every position "
          "of the training split", "gridsize1", "bp_unet", "tab:orange", "bp_unet_gs1"),
    Model("LSQML", "pty-chi's LSQML from a flat object, the known probe, its noise model, total variation, step "
          "and epochs chosen on the view's training split", "iterative", None, "tab:blue", "ptychi_lsqml"),
)
NAMES = tuple(m.name for m in MODELS)
BY_NAME = {m.name: m for m in MODELS}
PINN_BASED = tuple(m.name for m in MODELS if m.pinn_based)
PLAIN = tuple(m.name for m in MODELS if m.kind == "trained")  # the networks as trained, nothing after them
DELTAS = tuple((m.name, other) for m in MODELS for other in m.deltas)
PAIRED = frozenset((m.name, m.made_from) for m in MODELS if m.made_from)
COLOURS = {m.name: m.colour for m in MODELS}
STEMS = {m.name: m.stem for m in MODELS}


def model_of(network: str, kind: str) -> Model:
    """The model of ``kind`` made from ``network`` (e.g. bp_unet, hybrid -> BP-UNet+LSQML)."""
    for m in MODELS:
        if (m.network, m.kind) == (network, kind):
            return m
    raise KeyError(f"no {kind} model of network {network!r} in fly64study.models.MODELS")
