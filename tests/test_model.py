"""Phase E model: the forward model matches phase C, the overlap canvas, the Poisson loss, learning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fly64study import physics
from fly64study.model import DiffractionToObject, ModelConfig, PtychoPINN, Translator, poisson_nll
from fly64study.simulate import extract_patches, generate_dose
from fly64study.train import batch_loss, counts_of, make_groups


@pytest.fixture(scope="module")
def tiny_split(tiny):
    train, _ = generate_dose(tiny.design, tiny.generate, "1e5")
    return train


def _model(ds, gridsize=1, width=4, depth=2):
    cfg = ModelConfig(N=ds.N, gridsize=gridsize, width=width, depth=depth,
                      intensity_scale=ds.metadata["intensity_scale"])
    torch.manual_seed(0)
    return PtychoPINN(cfg, torch.from_numpy(ds.probeGuess))


def test_forward_model_reproduces_the_simulation(tiny_split):
    """Through the model's probe and physics, the true patches give the simulator's expected counts."""
    ds = tiny_split
    model = _model(ds)
    s = ds.metadata["intensity_scale"]
    predicted = physics.diffraction_amplitude(torch.from_numpy(ds.Y), model.net.probe).numpy()
    expected = s**2 * np.abs(np.fft.fftshift(np.fft.fft2(ds.Y.astype(np.complex128) * ds.probeGuess, norm="ortho"),
                                             axes=(-2, -1))) ** 2
    np.testing.assert_allclose((s * predicted.astype(np.float64)) ** 2, expected, rtol=2e-5, atol=2e-5 * expected.max())
    # and the measured counts scatter about it as Poisson: the truth has the lowest NLL among these
    counts = counts_of(ds)
    truth = poisson_nll(torch.from_numpy(predicted), counts, s)
    flat = poisson_nll(physics.diffraction_amplitude(torch.ones_like(torch.from_numpy(ds.Y)), model.net.probe), counts, s)
    assert float(truth) < float(flat)


def test_four_shifted_copies_reassemble_the_object():
    N = 32
    M = 96
    yy, xx = np.mgrid[0:M, 0:M]
    obj = np.exp(1j * (0.7 * np.sin(2 * np.pi * xx / 24) + 0.4 * np.cos(2 * np.pi * yy / 19))).astype(np.complex64)
    offsets = np.array([[-3.2, -2.5], [4.1, -1.7], [-2.6, 3.9], [1.7, 0.3]])
    offsets -= offsets.mean(axis=0)
    patches = extract_patches(obj, 48.3 + offsets[:, 0], 47.6 + offsets[:, 1], N)
    t = Translator(N)
    off = torch.from_numpy(offsets).float()[None]
    weight = torch.from_numpy(np.abs(physics.make_probe(N, aperture=0.4, central_stop=0.3, defocus=3.0)) ** 2).float()
    weight /= weight.max()
    # the canvas holds the object itself where the patches cover it
    L = t.canvas_size(off)
    values, weights = t.to_canvas(torch.from_numpy(patches)[None], off, torch.ones(N, N), L)
    canvas = (values / weights.real.clamp_min(1e-3))[0].numpy()
    m = (L - N) // 2
    truth = extract_patches(obj, np.array([48.3 - N / 2 - m + L / 2]), np.array([47.6 - N / 2 - m + L / 2]), L)[0]
    np.testing.assert_allclose(canvas[14:-14, 14:-14], truth[14:-14, 14:-14], atol=0.02)
    # averaging consistent patches changes nothing where the probe shines
    avg = t.average(torch.from_numpy(patches)[None], off, weight)[0].numpy()
    assert np.abs(avg - patches)[:, weight.numpy() > 0.05].max() < 5e-3


def test_poisson_nll_gradient():
    torch.manual_seed(0)
    amp = (torch.rand(2, 1, 6, 6, dtype=torch.float64) + 0.1).requires_grad_()
    counts = torch.poisson(torch.full((2, 1, 6, 6), 5.0, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a: poisson_nll(a, counts, 3.0), (amp,))
    # the NLL is smallest when the predicted counts equal the counts
    target = torch.sqrt(counts.clamp_min(1e-3)) / 3.0
    best = poisson_nll(target, counts, 3.0)
    for factor in (0.8, 1.25):
        assert poisson_nll(target * factor, counts, 3.0) > best


def test_network_output_is_a_bounded_transmission(tiny_split):
    ds = tiny_split
    for gridsize in (1, 2):
        net = _model(ds, gridsize=gridsize).net
        groups = make_groups(ds.xcoords, ds.ycoords, gridsize=gridsize, neighbor_count=7, seed=123)
        with torch.no_grad():
            out = net(torch.from_numpy(ds.diffraction)[groups.indices[:3]], groups.offsets[:3])
        C = gridsize * gridsize
        assert out.shape == (3, C, ds.N, ds.N) and out.dtype == torch.complex64
        assert bool(torch.isfinite(out).all())
        if gridsize == 1:  # sigmoid amplitude: a passive specimen
            assert float(out.abs().max()) < 1.0 and float(out.abs().min()) > 0.0
        else:  # a weighted average of such patches (Fourier shifts ring slightly where the probe is dark)
            shine = net.weight > 0.05
            assert float(out.abs()[..., shine].max()) < 1.01


@pytest.mark.parametrize("gridsize,thinning", [(1, 0.0), (2, 0.0), (2, 0.5)])
def test_training_steps_lower_the_loss(tiny_split, gridsize, thinning):
    ds = tiny_split
    model = _model(ds, gridsize=gridsize, width=8)
    groups = make_groups(ds.xcoords, ds.ycoords, gridsize=gridsize, neighbor_count=7, seed=123)
    idx, off = groups.indices[:16], groups.offsets[:16]
    amp, counts = torch.from_numpy(ds.diffraction)[idx], counts_of(ds)[idx]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_now():
        with torch.no_grad():
            return float(batch_loss(model, amp, counts, off, thinning, torch.Generator().manual_seed(5)))

    before = loss_now()
    for _ in range(5):
        loss = batch_loss(model, amp, counts, off, thinning, torch.Generator().manual_seed(5))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < before


def test_backprojection_of_noiseless_data_follows_the_object(tiny_split):
    """The network's physics input already carries the object's phase (before any training)."""
    ds = tiny_split
    net = _model(ds).net
    clean = physics.diffraction_amplitude(torch.from_numpy(ds.Y), net.probe)
    o0 = net.backproject(clean).numpy()
    w = np.abs(ds.probeGuess) ** 2
    from fly64study.metrics import weighted_phase_rmse
    assert weighted_phase_rmse(o0, ds.Y, w) < weighted_phase_rmse(np.ones_like(ds.Y), ds.Y, w)


def test_depth_must_divide_N():
    with pytest.raises(ValueError, match="train.depth"):
        DiffractionToObject(ModelConfig(N=24, gridsize=1, width=4, depth=4, intensity_scale=1.0),
                            torch.ones(24, 24, dtype=torch.complex64))
